{{/*
Names
*/}}
{{- define "chat-storage.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: names the Deployment, Service, ConfigMap and default Secret. */}}
{{- define "chat-storage.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "chat-storage.migrationName" -}}
{{- printf "%s-migrate" (include "chat-storage.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "chat-storage.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chat-storage.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The migration hook cannot use a service account this release creates: it runs first. */}}
{{- define "chat-storage.migrationServiceAccountName" -}}
{{- if .Values.migrations.serviceAccountName -}}
{{- .Values.migrations.serviceAccountName -}}
{{- else if .Values.serviceAccount.create -}}
default
{{- else -}}
{{- include "chat-storage.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{- define "chat-storage.secretName" -}}
{{- default (include "chat-storage.fullname" .) .Values.secrets.name -}}
{{- end -}}

{{- define "chat-storage.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Labels. Selector labels carry a component, so that the migration Job's pods are never
taken for server pods by the Service, the PodDisruptionBudget or the autoscaler.
*/}}
{{- define "chat-storage.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "chat-storage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chat-storage
{{- end -}}

{{- define "chat-storage.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-storage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* A track's pod selector (see _deployment.tpl): the stable one is selectorLabels. */}}
{{- define "chat-storage.trackSelectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-storage.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ ternary "canary" "server" (eq .Track "canary") }}
{{- end -}}

{{/* The canary's Deployment, Service and Ingress name. */}}
{{- define "chat-storage.canaryName" -}}
{{- printf "%s-canary" (include "chat-storage.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{/* The canary's image: its own tag or digest, in image.repository unless it names one. */}}
{{- define "chat-storage.canaryImage" -}}
{{- $repository := default .Values.image.repository .Values.canary.image.repository -}}
{{- if .Values.canary.image.digest -}}
{{- printf "%s@%s" $repository .Values.canary.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (toString .Values.canary.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The image migrations run with: the canary's when a canary is on, since its release may
bring migrations; by the expand-then-contract rule (docs/operations.md) the stable
release runs on the schema they leave.
*/}}
{{- define "chat-storage.migrationImage" -}}
{{- if .Values.canary.enabled -}}
{{- include "chat-storage.canaryImage" . -}}
{{- else -}}
{{- include "chat-storage.image" . -}}
{{- end -}}
{{- end -}}

{{/* A value as an environment string: whole floats (YAML numbers) without an exponent. */}}
{{- define "chat-storage.envString" -}}
{{- $v := . -}}
{{- if and (kindIs "float64" $v) (eq $v (floor $v)) -}}
{{- $v = int64 $v -}}
{{- end -}}
{{- toString $v -}}
{{- end -}}

{{/* Variables set from dedicated values, and variables that only come from Secrets. */}}
{{- define "chat-storage.managedVariables" -}}
CHAT_HOST CHAT_PORT CHAT_METRICS_PORT CHAT_WORKERS CHAT_SHUTDOWN_TIMEOUT_S CHAT_HEADER_TIMEOUT_S CHAT_IDLE_TIMEOUT_S CHAT_MAX_CONNECTIONS CHAT_MAX_CONNECTIONS_PER_IP CHAT_FD_RESERVE CHAT_INGEST_MODE CHAT_DATA_DIR S3_BUCKET S3_ENDPOINT_URL S3_PUBLIC_URL S3_REGION S3_SSE S3_SSE_KMS_KEY_ID
{{- end -}}
{{- define "chat-storage.secretVariables" -}}
DATABASE_URL REDIS_URL CHAT_API_KEYS S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY CHAT_OBJECT_SIGNING_KEY CHAT_SECRET_KEY CHAT_ENCRYPTION_KEK CHAT_ENCRYPTION_KEK_PREVIOUS
{{- end -}}

{{/* The non-secret environment, as YAML of a map: the ConfigMap's data, the Job's env. */}}
{{- define "chat-storage.configData" -}}
{{- $env := dict -}}
{{- range $name, $value := .Values.config -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $_ := set $env $name (include "chat-storage.envString" $value) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $env "CHAT_HOST" "0.0.0.0" -}}
{{- $_ := set $env "CHAT_PORT" (include "chat-storage.envString" .Values.containerPort) -}}
{{- if .Values.metrics.separatePort -}}
{{- $_ := set $env "CHAT_METRICS_PORT" (include "chat-storage.envString" .Values.metrics.port) -}}
{{- end -}}
{{- $_ := set $env "CHAT_WORKERS" "1" -}}
{{- $_ := set $env "CHAT_SHUTDOWN_TIMEOUT_S" (include "chat-storage.envString" .Values.shutdownTimeoutSeconds) -}}
{{- with .Values.connections -}}
{{- $_ := set $env "CHAT_HEADER_TIMEOUT_S" (include "chat-storage.envString" .headerTimeoutSeconds) -}}
{{- $_ := set $env "CHAT_IDLE_TIMEOUT_S" (include "chat-storage.envString" .idleTimeoutSeconds) -}}
{{- $_ := set $env "CHAT_MAX_CONNECTIONS" (include "chat-storage.envString" .maxConnections) -}}
{{- $_ := set $env "CHAT_MAX_CONNECTIONS_PER_IP" (include "chat-storage.envString" .maxConnectionsPerIp) -}}
{{- $_ := set $env "CHAT_FD_RESERVE" (include "chat-storage.envString" .fdReserve) -}}
{{- end -}}
{{- $_ := set $env "CHAT_INGEST_MODE" .Values.ingestMode -}}
{{- $_ := set $env "CHAT_DATA_DIR" "/data" -}}
{{- with .Values.s3.bucket }}{{ $_ := set $env "S3_BUCKET" . }}{{ end -}}
{{- with .Values.s3.endpointUrl }}{{ $_ := set $env "S3_ENDPOINT_URL" . }}{{ end -}}
{{- with .Values.s3.publicUrl }}{{ $_ := set $env "S3_PUBLIC_URL" . }}{{ end -}}
{{- with .Values.s3.region }}{{ $_ := set $env "S3_REGION" . }}{{ end -}}
{{- with .Values.s3.sse }}{{ $_ := set $env "S3_SSE" . }}{{ end -}}
{{- with .Values.s3.sseKmsKeyId }}{{ $_ := set $env "S3_SSE_KMS_KEY_ID" . }}{{ end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Environment entries read from Secrets (a YAML list). */}}
{{- define "chat-storage.secretEnv" -}}
{{- $default := include "chat-storage.secretName" . -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.database.secretName }}
      key: {{ .Values.database.secretKey }}
{{- if .Values.redis.enabled }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.redis.secretName }}
      key: {{ .Values.redis.secretKey }}
{{- end }}
{{- if .Values.apiKeys.secretKey }}
- name: CHAT_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.apiKeys.secretName }}
      key: {{ .Values.apiKeys.secretKey }}
      optional: true
{{- end }}
{{- if .Values.userTokens.secretKey }}
- name: CHAT_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.userTokens.secretName }}
      key: {{ .Values.userTokens.secretKey }}
      optional: true
{{- end }}
{{- if .Values.encryption.kekSecretKey }}
- name: CHAT_ENCRYPTION_KEK
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.encryption.secretName }}
      key: {{ .Values.encryption.kekSecretKey }}
      optional: true
{{- end }}
{{- if .Values.encryption.previousKekSecretKey }}
- name: CHAT_ENCRYPTION_KEK_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.encryption.secretName }}
      key: {{ .Values.encryption.previousKekSecretKey }}
      optional: true
{{- end }}
{{- if .Values.s3.bucket }}
- name: S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.s3.secretName }}
      key: {{ .Values.s3.accessKeyIdKey }}
      optional: true
- name: S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default $default .Values.s3.secretName }}
      key: {{ .Values.s3.secretAccessKeyKey }}
      optional: true
{{- end }}
{{- end -}}

{{- define "chat-storage.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (int (ceil .Values.shutdownTimeoutSeconds)) (int .Values.preStopSleepSeconds) 10 -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* PromQL label matchers selecting this release's series. */}}
{{- define "chat-storage.promSelector" -}}
{{- if .Values.prometheusRule.selector -}}
{{- .Values.prometheusRule.selector -}}
{{- else -}}
{{- printf "job=%q,namespace=%q" (include "chat-storage.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
Checks that fail rendering with a message saying what to change.
*/}}
{{- define "chat-storage.validate" -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if and (not .Values.redis.enabled) (or (gt $replicas 1) .Values.autoscaling.enabled) -}}
{{- $why := ternary "autoscaling.enabled=true" (printf "replicaCount=%d" $replicas) .Values.autoscaling.enabled -}}
{{- fail (printf "chat-storage: %s needs Redis: replicas coordinate through Redis streams (live events of a session written on another replica, shared rate limits, recovery of a dead replica's streams). Set redis.enabled=true and put REDIS_URL in Secret %q (key %q), or run a single replica without autoscaling." $why (default (include "chat-storage.secretName" .) .Values.redis.secretName) .Values.redis.secretKey) -}}
{{- end -}}
{{- if and (eq .Values.ingestMode "async") (not .Values.redis.enabled) -}}
{{- fail "chat-storage: ingestMode=async needs Redis (accepted messages wait in a Redis stream): set redis.enabled=true" -}}
{{- end -}}
{{- $managed := splitList " " (include "chat-storage.managedVariables" .) -}}
{{- $secret := splitList " " (include "chat-storage.secretVariables" .) -}}
{{- range $name, $_ := .Values.config -}}
{{- if has $name $secret -}}
{{- fail (printf "chat-storage: config.%s is secret: put it in the Secret (see secrets.name and the *.secretKey values), never in values" $name) -}}
{{- end -}}
{{- if has $name $managed -}}
{{- fail (printf "chat-storage: config.%s is set by the chart; use the value it comes from instead (see the comment on config in values.yaml)" $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.metrics.separatePort (eq (int .Values.metrics.port) (int .Values.containerPort)) -}}
{{- fail "chat-storage: metrics.port must differ from containerPort (or set metrics.separatePort=false)" -}}
{{- end -}}
{{- $grace := int (include "chat-storage.terminationGracePeriodSeconds" .) -}}
{{- $needed := addf (float64 .Values.preStopSleepSeconds) (float64 .Values.shutdownTimeoutSeconds) -}}
{{- if le (float64 $grace) $needed -}}
{{- fail (printf "chat-storage: terminationGracePeriodSeconds=%d must be greater than preStopSleepSeconds + shutdownTimeoutSeconds (%v), or in-flight requests are killed before the graceful shutdown ends" $grace $needed) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "chat-storage: autoscaling.minReplicas must not be greater than autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) -}}
{{- fail "chat-storage: ingress.enabled needs at least one host in ingress.hosts" -}}
{{- end -}}
{{- if and .Values.canary.enabled (not .Values.ingress.enabled) -}}
{{- fail "chat-storage: canary.enabled needs ingress.enabled: ingress-nginx's canary Ingress is what sends canary.weight percent of requests to the canary" -}}
{{- end -}}
{{- if and .Values.canary.enabled (not .Values.canary.image.tag) (not .Values.canary.image.digest) -}}
{{- fail "chat-storage: canary.enabled needs canary.image.tag or canary.image.digest: the release being tried" -}}
{{- end -}}
{{- end -}}
