"""Pure status functions: what every kind shares (``conditions``) and each kind's own (``collector``)."""
