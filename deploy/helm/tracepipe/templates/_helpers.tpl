{{/* The name every object of this release starts with. */}}
{{- define "tracepipe.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tracepipe.labels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "tracepipe.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
One tracepipe workload: its ConfigMap, Deployment or DaemonSet, metrics Service, and (for a
Deployment) HPA and PodDisruptionBudget. Takes a dict: root, component, kind (Deployment |
DaemonSet), config (graph YAML), env (list), ports (list of {name, port, protocol, hostPort}),
replicas, resources, hpa, pdb, service (bool: a Service for its receiving ports).
*/}}
{{- define "tracepipe.workload" -}}
{{- $root := .root -}}
{{- $name := printf "%s-%s" (include "tracepipe.fullname" $root) .component -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
  labels:
    {{- include "tracepipe.labels" . | nindent 4 }}
data:
  config.yaml: |
    {{- .config | nindent 4 }}
---
apiVersion: apps/v1
kind: {{ .kind }}
metadata:
  name: {{ $name }}
  labels:
    {{- include "tracepipe.labels" . | nindent 4 }}
spec:
  {{- if eq .kind "Deployment" }}
  {{- if not .hpa.enabled }}
  replicas: {{ .replicas }}
  {{- end }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "tracepipe.selector" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "tracepipe.selector" . | nindent 8 }}
      annotations:
        checksum/config: {{ .config | sha256sum }}
    spec:
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: tracepipe
          image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}"
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [run, --config, /etc/tracepipe/config.yaml]
          {{- $env := .env }}
          {{- range $k, $v := $root.Values.env }}
          {{- $env = append $env (dict "name" $k "value" (toString $v)) }}
          {{- end }}
          {{- with $env }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            {{- range .ports }}
            - name: {{ .name }}
              containerPort: {{ .port }}
              protocol: {{ .protocol | default "TCP" }}
              {{- if .hostPort }}
              hostPort: {{ .port }}
              {{- end }}
            {{- end }}
            - { name: metrics, containerPort: 8888, protocol: TCP }
          readinessProbe:
            httpGet: { path: /readyz, port: metrics }
            periodSeconds: 5
          livenessProbe:
            httpGet: { path: /healthz, port: metrics }
            periodSeconds: 10
            failureThreshold: 6
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - { name: config, mountPath: /etc/tracepipe, readOnly: true }
            - { name: data, mountPath: /var/lib/tracepipe }
      volumes:
        - name: config
          configMap: { name: {{ $name }} }
        - name: data
          emptyDir: {}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "tracepipe.labels" . | nindent 4 }}
spec:
  selector:
    {{- include "tracepipe.selector" . | nindent 4 }}
  ports:
    {{- if .service }}
    {{- range .ports }}
    - name: {{ .serviceName | default .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
      protocol: {{ .protocol | default "TCP" }}
    {{- end }}
    {{- end }}
    - { name: metrics, port: 8888, targetPort: metrics, protocol: TCP }
{{- if eq .kind "Deployment" }}
{{- if .hpa.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ $name }}
  labels:
    {{- include "tracepipe.labels" . | nindent 4 }}
spec:
  scaleTargetRef: { apiVersion: apps/v1, kind: Deployment, name: {{ $name }} }
  minReplicas: {{ .hpa.minReplicas }}
  maxReplicas: {{ .hpa.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: { type: Utilization, averageUtilization: {{ .hpa.targetCPUUtilizationPercentage }} }
{{- end }}
{{- if .pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $name }}
  labels:
    {{- include "tracepipe.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "tracepipe.selector" . | nindent 6 }}
{{- end }}
{{- end }}
{{- if $root.Values.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ $name }}
  labels:
    {{- include "tracepipe.labels" . | nindent 4 }}
    {{- with $root.Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "tracepipe.selector" . | nindent 6 }}
  endpoints:
    - { port: metrics, path: /metrics, interval: {{ $root.Values.serviceMonitor.interval }} }
{{- end }}
{{- end -}}
