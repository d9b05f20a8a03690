{{/* Names and labels shared by the templates. */}}
{{- define "nenya.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nenya.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nenya.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nenya.secretName" -}}
{{- default (printf "%s-secrets" (include "nenya.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The state URL written into the config: the given one, or the bundled Valkey. */}}
{{- define "nenya.stateUrl" -}}
{{- if .Values.state.url -}}
{{- .Values.state.url -}}
{{- else if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379" (include "nenya.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The hardened security context of every container. */}}
{{- define "nenya.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
