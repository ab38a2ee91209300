{{- define "agentsandbox.name" -}}agentsandbox{{- end -}}

{{- define "agentsandbox.operatorName" -}}{{ .Release.Name }}-operator{{- end -}}

{{- define "agentsandbox.labels" -}}
app.kubernetes.io/name: {{ include "agentsandbox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "agentsandbox.operatorSelector" -}}
app.kubernetes.io/name: {{ include "agentsandbox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
