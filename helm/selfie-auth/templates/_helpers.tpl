{{- define "selfie-auth.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "selfie-auth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "selfie-auth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "selfie-auth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "selfie-auth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "selfie-auth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "selfie-auth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "selfie-auth.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "selfie-auth.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* PostgreSQL when a database secret is named; SQLite on a volume otherwise. */}}
{{- define "selfie-auth.usesPostgres" -}}
{{- if .Values.database.existingSecret.name -}}true{{- end -}}
{{- end -}}

{{/* A Kubernetes memory quantity (plain bytes, Ki, Mi or Gi) in bytes. */}}
{{- define "selfie-auth.memoryBytes" -}}
{{- $quantity := toString . -}}
{{- if hasSuffix "Gi" $quantity -}}{{ mul (trimSuffix "Gi" $quantity | int64) 1073741824 }}
{{- else if hasSuffix "Mi" $quantity -}}{{ mul (trimSuffix "Mi" $quantity | int64) 1048576 }}
{{- else if hasSuffix "Ki" $quantity -}}{{ mul (trimSuffix "Ki" $quantity | int64) 1024 }}
{{- else -}}{{ $quantity | int64 }}
{{- end -}}
{{- end -}}

{{/* A duration ("500ms", "5s", "2m", "1h") in whole seconds. */}}
{{- define "selfie-auth.seconds" -}}
{{- $duration := toString . -}}
{{- if hasSuffix "ms" $duration -}}0
{{- else if hasSuffix "s" $duration -}}{{ trimSuffix "s" $duration | int }}
{{- else if hasSuffix "m" $duration -}}{{ mul (trimSuffix "m" $duration | int) 60 }}
{{- else if hasSuffix "h" $duration -}}{{ mul (trimSuffix "h" $duration | int) 3600 }}
{{- else -}}{{ fail (printf "%q: write durations for the chart as one number and unit (500ms, 10s, 2m, 1h)" $duration) }}
{{- end -}}
{{- end -}}

{{- define "selfie-auth.validate" -}}
{{- $delay := include "selfie-auth.seconds" .Values.config.shutdownDelay | int -}}
{{- $drain := include "selfie-auth.seconds" .Values.config.drainTimeout | int -}}
{{- if gt (add $delay $drain 5) (int .Values.terminationGracePeriodSeconds) -}}
{{- fail (printf "config.shutdownDelay (%ds) + config.drainTimeout (%ds) + 5s exceeds terminationGracePeriodSeconds (%d): Kubernetes would kill the pod mid-drain" $delay $drain (int .Values.terminationGracePeriodSeconds)) -}}
{{- end -}}
{{- with .Values.resources.limits.memory -}}
{{- $limit := include "selfie-auth.memoryBytes" . | int64 -}}
{{- $budgets := $.Values.config.memory -}}
{{- $streams := mul (int64 $.Values.config.maxOpenStreams) 8192 -}}
{{- /* 100 MiB for the process, 32 MiB for callback bodies and 32 MiB for reads being received. */}}
{{- $needed := add (int64 $budgets.requestBytes) (int64 $budgets.submissionBytes) (int64 $budgets.decodeBytes) $streams 104857600 33554432 33554432 -}}
{{- if gt (int64 $needed) $limit -}}
{{- fail (printf "config.memory budgets, config.maxOpenStreams at 8 KiB each, 32 MiB of callbacks, 32 MiB of reads and 100 MiB for the process (%d bytes) exceed resources.limits.memory (%d bytes): a flood of requests could get the pod OOM-killed" (int64 $needed) $limit) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.auth.trustForwardedClientCert (not .Values.auth.forwardedClientCert.trustedPeers) (not .Values.auth.forwardedClientCert.trustedProxies) -}}
{{- fail "auth.trustForwardedClientCert needs auth.forwardedClientCert.trustedPeers (Istio's sidecar connects from 127.0.0.6/32) or trustedProxies: a header believed from anyone makes anyone anyone" -}}
{{- end -}}
{{- if not (include "selfie-auth.usesPostgres" .) -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled -}}
{{- fail "several replicas need PostgreSQL: set database.existingSecret.name (or replicaCount: 1 for SQLite)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
