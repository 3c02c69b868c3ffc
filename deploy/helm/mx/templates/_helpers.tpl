{{/* Chart name. */}}
{{- define "mx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: model-express-server by default, the name the Dynamo operator's URL uses. */}}
{{- define "mx.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "mx.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mx.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mx.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mx.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Redis URL the server uses, empty for the embedded (SQLite) registry. */}}
{{- define "mx.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379" (include "mx.fullname" .) -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "mx.claimName" -}}
{{- default (printf "%s-cache" (include "mx.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* Render-time checks. */}}
{{- define "mx.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "mx.redisUrl" .)) -}}
{{- fail "replicaCount > 1 needs a shared registry: set redis.enabled=true or redis.url (the embedded SQLite registry serves one replica)" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.auth.enabled .Values.service.mirrorPort (not (hasKey .Values.serverArgs "allow-plaintext-mirror")) -}}
{{- fail "with TLS and a token mx-server refuses a plain-HTTP mirror: set service.mirrorPort=0, or serverArgs.allow-plaintext-mirror=true when a TLS proxy fronts it" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.secretName) -}}
{{- fail "auth.enabled needs auth.secretName (a Secret holding the bearer token)" -}}
{{- end -}}
{{- end -}}
