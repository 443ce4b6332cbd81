{{- define "cvg.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "cvg.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cvg.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cvg.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{- define "cvg.secretName" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecret }}{{- else -}}{{ include "cvg.fullname" . }}{{- end -}}
{{- end -}}

{{- define "cvg.rayAddress" -}}
{{ printf "ray://%s-ray-head-svc:10001" (include "cvg.fullname" .) }}
{{- end -}}

{{/* The API key a workload acts with (its service account's, from auth.serviceAccountKeys), if any. */}}
{{- define "cvg.keyEnv" -}}
{{- if and .key .root.Values.auth.serviceAccountKeys.existingSecret }}
- name: CVG_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.auth.serviceAccountKeys.existingSecret }}
      key: {{ .key }}
      optional: true
{{- end }}
{{- end -}}

{{/* The ledger's signing key, only for what signs checkpoints (the API and the checkpoint CronJob). */}}
{{- define "cvg.ledgerKeyEnv" -}}
{{- if .Values.ledger.signingKey.existingSecret }}
- name: CVG_LEDGER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.ledger.signingKey.existingSecret }}
      key: ledger.key
{{- end }}
{{- end -}}

{{/* The key that seals webhook secrets at rest, only for what seals or opens them (the API, the deliverer and its
sweep, drift checks, which deliver their alerts, and the migration Job). */}}
{{- define "cvg.secretKeyEnv" -}}
{{- if .Values.secrets.existingSecret }}
- name: CVG_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.key }}
{{- end }}
{{- end -}}

{{/* Environment every convergence container gets: settings, the database URL, a writable home. */}}
{{- define "cvg.env" -}}
- name: CVG_HOME
  value: /var/lib/convergence
{{- if not .Values.database.embedded }}
- name: CVG_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "cvg.secretName" . }}
      key: {{ .Values.database.existingSecretKey }}
{{- end }}
{{- if .Values.rayCluster.enabled }}
- name: CVG_RAY_ADDRESS
  value: {{ include "cvg.rayAddress" . }}
{{- end }}
{{- end -}}

{{- define "cvg.envFrom" -}}
- configMapRef:
    name: {{ include "cvg.fullname" . }}
{{- if .Values.extraSecretEnv }}
- secretRef:
    name: {{ include "cvg.fullname" . }}-env
{{- end }}
{{- end -}}

{{- define "cvg.volumeMounts" -}}
- name: home
  mountPath: /var/lib/convergence
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "cvg.volumes" -}}
- name: home
{{- if .Values.database.embedded }}
  persistentVolumeClaim:
    claimName: {{ include "cvg.fullname" . }}-home
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{/* A pod spec running `cvg ARGS…` as the given ServiceAccount. */}}
{{- define "cvg.podSpec" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "cvg.fullname" $root }}-{{ .sa }}
automountServiceAccountToken: {{ .token | default false }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .restartPolicy }}
restartPolicy: {{ .restartPolicy }}
{{- end }}
containers:
  - name: {{ .name }}
    image: {{ include "cvg.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: ["cvg"]
    args:
      {{- toYaml .args | nindent 6 }}
    env:
      {{- include "cvg.env" $root | nindent 6 }}
      {{- include "cvg.keyEnv" (dict "root" $root "key" .key) | nindent 6 }}
      {{- if .ledgerKey }}
      {{- include "cvg.ledgerKeyEnv" $root | nindent 6 }}
      {{- end }}
      {{- if .secretKey }}
      {{- include "cvg.secretKeyEnv" $root | nindent 6 }}
      {{- end }}
    envFrom:
      {{- include "cvg.envFrom" $root | nindent 6 }}
    {{- with .resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      {{- include "cvg.volumeMounts" $root | nindent 6 }}
volumes:
  {{- include "cvg.volumes" $root | nindent 2 }}
{{- end -}}
