{{/* Names and labels shared by every template of the chart. */}}

{{- define "cupaas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cupaas.fullname" -}}
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

{{- define "cupaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cupaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cupaas.labels" -}}
{{ include "cupaas.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cupaas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cupaas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The name of a referenced object: the value given, else "<fullname>-<suffix>". */}}
{{- define "cupaas.refName" -}}
{{- $root := index . 0 }}{{ $given := index . 1 }}{{ $suffix := index . 2 }}
{{- default (printf "%s-%s" (include "cupaas.fullname" $root) $suffix) $given }}
{{- end }}

{{- define "cupaas.claimName" -}}
{{- default (printf "%s-state" (include "cupaas.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{- define "cupaas.tlsSecretName" -}}
{{- include "cupaas.refName" (list . .Values.ingress.tls.secretName "tls") }}
{{- end }}

{{/* The directory holding the engine's Unix socket, as the cupaas container sees it. */}}
{{- define "cupaas.engineSocketDir" -}}
{{- if .Values.dind.enabled -}}
/run/cupaas-engine
{{- else -}}
{{- (required "dockerHost is required when dind.enabled is false" .Values.dockerHost) | trimPrefix "unix://" | dir -}}
{{- end -}}
{{- end }}

{{/* Where build relay sockets live: the same path in the cupaas container and for the engine. */}}
{{- define "cupaas.relayDir" -}}
{{- .Values.buildRelayDir | default "/var/lib/cupaas-relay" -}}
{{- end }}
