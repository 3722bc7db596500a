{{/*
The server's Deployment, for one track: "stable" (the release) or "canary" (canary.*: its
own image, replicas and pods, which neither the stable Deployment nor the stable Service
select, so ingress-nginx's canary Ingress alone decides what reaches them).
Called with the root context merged with {"Track": "stable"|"canary"}.
*/}}
{{- define "chat-storage.deployment" -}}
{{- $canary := eq .Track "canary" -}}
{{- $name := include "chat-storage.fullname" . -}}
{{- $component := "server" -}}
{{- if $canary -}}
{{- $name = include "chat-storage.canaryName" . -}}
{{- $component = "canary" -}}
{{- end -}}
{{- $selector := include "chat-storage.trackSelectorLabels" . -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "chat-storage.labels" . | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  {{- if $canary }}
  replicas: {{ int .Values.canary.replicaCount }}
  {{- else if not .Values.autoscaling.enabled }}
  replicas: {{ int .Values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- $selector | nindent 6 }}
  {{- with .Values.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    metadata:
      annotations:
        # a changed setting rolls the pods
        checksum/config: {{ include "chat-storage.configData" . | sha256sum }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "chat-storage.labels" . | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "chat-storage.serviceAccountName" . }}
      automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
      # no <SERVICE>_PORT variables: a Service named "chat" would otherwise set CHAT_PORT
      enableServiceLinks: false
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ include "chat-storage.terminationGracePeriodSeconds" . }}
      containers:
        - name: chat-storage
          image: {{ ternary (include "chat-storage.canaryImage" .) (include "chat-storage.image" .) $canary }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          command: ["chat-storage"]
          args: ["serve"]
          ports:
            - name: http
              containerPort: {{ int .Values.containerPort }}
              protocol: TCP
            {{- if .Values.metrics.separatePort }}
            - name: metrics
              containerPort: {{ int .Values.metrics.port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "chat-storage.fullname" . }}
            {{- with .Values.extraEnvFrom }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            {{- include "chat-storage.secretEnv" . | nindent 12 }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: {{ .Values.probes.startup.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
            failureThreshold: {{ .Values.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
            successThreshold: {{ .Values.probes.readiness.successThreshold }}
          {{- if gt (int .Values.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ int .Values.preStopSleepSeconds }}"]
          {{- end }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: data
              mountPath: /data
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
        - name: data
          emptyDir:
            sizeLimit: {{ .Values.dataVolume.sizeLimit }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- range .Values.topologySpreadConstraints }}
        {{- $constraint := deepCopy . }}
        {{- if not (hasKey $constraint "labelSelector") }}
        {{- $_ := set $constraint "labelSelector" (dict "matchLabels" ($selector | fromYaml)) }}
        {{- end }}
        - {{ toYaml $constraint | indent 10 | trim }}
        {{- end }}
      {{- end }}
{{- end -}}
