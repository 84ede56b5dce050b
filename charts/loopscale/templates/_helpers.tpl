{{/* Chart name, truncated to a DNS label. */}}
{{- define "loopscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name. */}}
{{- define "loopscale.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "loopscale.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "loopscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loopscale
{{- end }}

{{/* Labels selecting the operator pod. */}}
{{- define "loopscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loopscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "loopscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loopscale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ClusterRole the per-namespace loopscale-load ServiceAccount is bound to. */}}
{{- define "loopscale.loadClusterRole" -}}
{{- printf "%s-load" (include "loopscale.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* image:tag with the tag defaulting to the appVersion. */}}
{{- define "loopscale.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) }}
{{- end }}
