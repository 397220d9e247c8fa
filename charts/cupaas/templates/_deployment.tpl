{{/*
A cupaas Deployment; the context is (dict "root" $ "role" ROLE), ROLE one of:
  all      cupaas serve: the forge webhooks and the build workers in one process. One replica: the job queue is
           a single-writer database on the state volume, and a second pod would wait on its ReadWriteOnce claim.
  webhook  cupaas serve --queue kafka://...: webhooks only (no engine); any number of replicas.
  worker   cupaas worker --queue kafka://...: builds and GitOps commits, kafka.workerReplicas pods in one
           consumer group; their state volume holds git caches only, so it is an emptyDir.
*/}}
{{- define "cupaas.deployment" -}}
{{- $role := .role -}}
{{- with .root -}}
{{- $fullname := include "cupaas.fullname" . -}}
{{- $ssh := .Values.git.ssh -}}
{{- $creds := .Values.git.credentials -}}
{{- $queue := printf "kafka://%s" .Values.kafka.bootstrapServers -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}{{ if eq $role "worker" }}-worker{{ end }}
  labels:
    {{- include "cupaas.labels" . | nindent 4 }}
    {{- if ne $role "all" }}
    app.kubernetes.io/component: {{ $role }}
    {{- end }}
spec:
  {{- if eq $role "all" }}
  replicas: 1
  strategy:
    type: Recreate
  {{- else if eq $role "webhook" }}
  replicas: {{ .Values.kafka.webhookReplicas }}
  {{- else }}
  replicas: {{ .Values.kafka.workerReplicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "cupaas.selectorLabels" . | nindent 6 }}
      {{- if ne $role "all" }}
      app.kubernetes.io/component: {{ $role }}
      {{- end }}
  template:
    metadata:
      labels:
        {{- include "cupaas.labels" . | nindent 8 }}
        {{- if ne $role "all" }}
        app.kubernetes.io/component: {{ $role }}
        {{- end }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "cupaas.serviceAccountName" . }}
      # The token only when cupaas follows rollouts through the API (followRollouts, templates/rbac.yaml).
      automountServiceAccountToken: {{ .Values.followRollouts.enabled }}
      enableServiceLinks: false
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: cupaas
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          # The image's entrypoint (tini) stays: it forwards signals and reaps git's child processes.
          {{- if eq $role "all" }}
          args: ["cupaas", "serve", "$(CUPAAS_CONTROL_REPO)", "--host", "0.0.0.0", "--port", "8080",
                 "--control-branch", {{ .Values.controlRepo.branch | quote }}, "--workers", {{ .Values.workers | quote }}]
          {{- else if eq $role "webhook" }}
          args: ["cupaas", "serve", "$(CUPAAS_CONTROL_REPO)", "--host", "0.0.0.0", "--port", "8080",
                 "--control-branch", {{ .Values.controlRepo.branch | quote }}, "--queue", {{ $queue | quote }}]
          {{- else }}
          # /metrics and /healthz on 9090, for the scraper and the probes: no Service points at it.
          args: ["cupaas", "worker", "$(CUPAAS_CONTROL_REPO)", "--control-branch", {{ .Values.controlRepo.branch | quote }},
                 "--metrics-host", "0.0.0.0", "--metrics-port", "9090",
                 "--threads", {{ .Values.workers | quote }}, "--queue", {{ $queue | quote }}]
          {{- end }}
          ports:
            {{- if ne $role "worker" }}
            - name: http
              containerPort: 8080
              protocol: TCP
            {{- else }}
            - name: metrics
              containerPort: 9090
              protocol: TCP
            {{- end }}
          env:
            - name: CUPAAS_CONTROL_REPO
              value: {{ required "controlRepo.url is required: the git URL of your control repo" .Values.controlRepo.url | quote }}
            - name: CUPAAS_WEBHOOK_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ include "cupaas.refName" (list . .Values.webhookSecret.name "webhook") }}
                  key: {{ .Values.webhookSecret.key | quote }}
            - name: CUPAAS_STATE_DIR
              value: /var/lib/cupaas
            # The root filesystem is read-only; git and ssh get a writable home.
            - name: HOME
              value: /tmp
            # The engine is reached through a Unix socket on a volume only this pod mounts: it never
            # listens on TCP, where a build (or anything in the pod's network) could drive it.
            - name: DOCKER_HOST
              {{- if .Values.dind.enabled }}
              value: unix:///run/cupaas-engine/docker.sock
              {{- else }}
              value: {{ required "dockerHost is required when dind.enabled is false: unix:///PATH/docker.sock of an engine on the node" .Values.dockerHost | quote }}
              {{- end }}
            # Where the build relay puts its sockets; the engine sees the same path (docs/architecture.md).
            - name: CUPAAS_BUILD_RELAY_DIR
              value: {{ include "cupaas.relayDir" . | quote }}
            {{- if .Values.registryAuth.enabled }}
            - name: DOCKER_CONFIG
              value: /etc/cupaas/docker
            {{- end }}
            {{- if .Values.forgeToken.enabled }}
            - name: {{ .Values.forgeToken.env }}
              valueFrom:
                secretKeyRef:
                  name: {{ include "cupaas.refName" (list . .Values.forgeToken.name "forge") }}
                  key: {{ .Values.forgeToken.key | quote }}
            {{- end }}
            {{- if $ssh.enabled }}
            - name: GIT_SSH_COMMAND
              value: >-
                ssh -i /etc/cupaas/ssh/id -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes
                -o UserKnownHostsFile=/etc/cupaas/ssh/known_hosts -o BatchMode=yes
            {{- end }}
            {{- if $creds.enabled }}
            # git's credential store, configured through the environment (git 2.31+): no file to write.
            - name: GIT_CONFIG_COUNT
              value: "1"
            - name: GIT_CONFIG_KEY_0
              value: credential.helper
            - name: GIT_CONFIG_VALUE_0
              value: store --file=/etc/cupaas/git/credentials
            {{- end }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- if ne $role "worker" }}
          startupProbe:
            # The first start clones the control repo.
            httpGet: {path: /healthz, port: http}
            periodSeconds: 5
            failureThreshold: 60
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 10
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 6
          {{- else }}
          # 200 while every job thread and the queue's reader run: a wedged worker is restarted (its jobs
          # move to the other workers with its partitions).
          startupProbe:
            httpGet: {path: /healthz, port: metrics}
            periodSeconds: 5
            failureThreshold: 60
          livenessProbe:
            httpGet: {path: /healthz, port: metrics}
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 6
          {{- end }}
          {{- with .Values.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .Values.securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: state
              mountPath: /var/lib/cupaas
            - name: tmp
              mountPath: /tmp
            {{- if $ssh.enabled }}
            - name: git-ssh
              mountPath: /etc/cupaas/ssh
              readOnly: true
            {{- end }}
            {{- if $creds.enabled }}
            - name: git-credentials
              mountPath: /etc/cupaas/git
              readOnly: true
            {{- end }}
            {{- if .Values.registryAuth.enabled }}
            - name: registry-auth
              mountPath: /etc/cupaas/docker
              readOnly: true
            {{- end }}
            {{- if .Values.sealingCertificate.enabled }}
            - name: sealing-cert
              mountPath: /etc/cupaas/sealing
              readOnly: true
            {{- end }}
            - name: engine-socket
              mountPath: {{ include "cupaas.engineSocketDir" . | quote }}
            - name: build-relay
              mountPath: {{ include "cupaas.relayDir" . | quote }}
        {{- if and .Values.dind.enabled (ne $role "webhook") }}
        # PRIVILEGED: Docker-in-Docker needs root on the node to run its engine. It listens on the pod's
        # loopback only (no TLS), so nothing outside this pod can use it. dind.enabled=false turns it off.
        - name: dind
          image: "{{ .Values.dind.image.repository }}:{{ .Values.dind.image.tag }}"
          imagePullPolicy: {{ .Values.dind.image.pullPolicy }}
          # The image's `dind` wrapper prepares cgroups, then runs dockerd with exactly these flags:
          # a Unix socket on the volume shared with the cupaas container only (group 10001, cupaas' own),
          # no TCP listener, and no bridge network: builds get no network but the mirrors cupaas relays.
          command: ["dind", "dockerd"]
          args:
            - --host=unix:///run/cupaas-engine/docker.sock
            - --group=10001
            - --bridge=none
            - --iptables=false
            - --ip-masq=false
            {{- range .Values.dind.insecureRegistries }}
            - --insecure-registry={{ . }}
            {{- end }}
          env:
            - name: DOCKER_TLS_CERTDIR
              value: ""
          securityContext:
            privileged: true
          {{- with .Values.dind.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: dind-storage
              mountPath: /var/lib/docker
            - name: engine-socket
              mountPath: /run/cupaas-engine
            - name: build-relay
              mountPath: {{ include "cupaas.relayDir" . | quote }}
        {{- end }}
      volumes:
        - name: state
          {{- if and .Values.persistence.enabled (eq $role "all") }}
          persistentVolumeClaim:
            claimName: {{ include "cupaas.claimName" . }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        - name: tmp
          emptyDir: {}
        {{- if $ssh.enabled }}
        - name: git-ssh
          secret:
            secretName: {{ include "cupaas.refName" (list . $ssh.secretName "git-ssh") }}
            # Group-readable for the pod's fsGroup; ssh accepts a key owned by another user.
            defaultMode: 0440
            items:
              - {key: {{ $ssh.privateKeyKey | quote }}, path: id}
              - {key: {{ $ssh.knownHostsKey | quote }}, path: known_hosts}
        {{- end }}
        {{- if $creds.enabled }}
        - name: git-credentials
          secret:
            secretName: {{ include "cupaas.refName" (list . $creds.secretName "git-credentials") }}
            defaultMode: 0440
            items:
              - {key: {{ $creds.key | quote }}, path: credentials}
        {{- end }}
        {{- if .Values.registryAuth.enabled }}
        - name: registry-auth
          secret:
            secretName: {{ include "cupaas.refName" (list . .Values.registryAuth.secretName "registry") }}
            defaultMode: 0440
            items:
              - {key: .dockerconfigjson, path: config.json}
        {{- end }}
        {{- if .Values.sealingCertificate.enabled }}
        - name: sealing-cert
          configMap:
            name: {{ include "cupaas.refName" (list . .Values.sealingCertificate.configMapName "sealing-cert") }}
            items:
              - {key: {{ .Values.sealingCertificate.key | quote }}, path: cert.pem}
        {{- end }}
        {{- if .Values.dind.enabled }}
        - name: engine-socket
          emptyDir: {}
        - name: build-relay
          emptyDir: {}
        {{- else }}
        # An engine on the node: its socket's directory and the relay directory, at the same paths.
        - name: engine-socket
          hostPath: {path: {{ include "cupaas.engineSocketDir" . | quote }}, type: Directory}
        - name: build-relay
          hostPath: {path: {{ include "cupaas.relayDir" . | quote }}, type: DirectoryOrCreate}
        {{- end }}
        {{- if and .Values.dind.enabled (ne $role "webhook") }}
        - name: dind-storage
          emptyDir:
            {{- with .Values.dind.storageSizeLimit }}
            sizeLimit: {{ . | quote }}
            {{- end }}
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
{{- end }}
