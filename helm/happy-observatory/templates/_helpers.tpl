{{- define "observatory.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "observatory.labels" -}}
app.kubernetes.io/name: happy-observatory
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: happy-observatory
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "observatory.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* The bundled InfluxDB's in-cluster URL. */ -}}
{{- define "observatory.influxdbURL" -}}
{{ printf "http://%s-influxdb.%s.svc:8086" (include "observatory.fullname" .) .Release.Namespace }}
{{- end -}}

{{- /* The InfluxDB URL Grafana should use: explicit, else shared-config's, else the bundled one. */ -}}
{{- define "observatory.grafanaInfluxdbURL" -}}
{{- if .Values.grafana.datasource.url -}}
{{ .Values.grafana.datasource.url }}
{{- else if .Values.sharedConfig.data.influxdb_url -}}
{{ .Values.sharedConfig.data.influxdb_url }}
{{- else if .Values.influxdb.enabled -}}
{{ include "observatory.influxdbURL" . }}
{{- end -}}
{{- end -}}

{{- /* Namespaces that may hold collectors: the release's, operator.watchNamespaces and
sharedConfig.namespaces. A pod reads ConfigMap and Secret volumes from its own namespace, so the
shared-config (and the agents' InfluxDB token, with the bundled InfluxDB) goes into each. JSON, for
fromJsonArray. */ -}}
{{- define "observatory.collectorNamespaces" -}}
{{- concat (list .Release.Namespace) .Values.operator.watchNamespaces .Values.sharedConfig.namespaces | uniq | toJson -}}
{{- end -}}
