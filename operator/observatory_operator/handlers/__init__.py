"""Each kind's round (plan and status as functions for the controller machinery) and its thin kopf handler."""
