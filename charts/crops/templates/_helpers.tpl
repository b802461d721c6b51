{{/* Labels every object carries. */}}
{{- define "crops.labels" -}}
app.kubernetes.io/part-of: crops
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The labels of a role's pods (values `roles`): what the NetworkPolicies select. Pods built at
run time (crops.k8s.platform.Platform.pod_labels) carry exactly these. */}}
{{- define "crops.podLabels" -}}
{{- $ := index . 0 -}}{{- $name := index . 1 -}}
{{- $role := required (printf "roles.%s is required" $name) (get $.Values.roles $name) -}}
app.kubernetes.io/part-of: crops
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ required (printf "roles.%s.component is required" $name) $role.component }}
{{- end }}

{{/* The ServiceAccount of a role's pods. */}}
{{- define "crops.serviceAccount" -}}
{{- $ := index . 0 -}}{{- $name := index . 1 -}}
{{- $role := required (printf "roles.%s is required" $name) (get $.Values.roles $name) -}}
{{ required (printf "roles.%s.serviceAccount is required" $name) $role.serviceAccount }}
{{- end }}

{{/* The platform image. */}}
{{- define "crops.image" -}}
{{ printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}

{{/* The image of Ray pods: the CUDA build on GPU clusters. */}}
{{- define "crops.rayImage" -}}
{{- if .Values.gpu.enabled -}}
{{ printf "%s:%s" .Values.image.repository (toString .Values.gpu.rayImageTag) }}
{{- else -}}
{{ include "crops.image" . }}
{{- end }}
{{- end }}

{{/* Pod-level security: a fixed non-root user, the runtime's default seccomp profile. */}}
{{- define "crops.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security: read-only root, no privilege escalation, no capabilities. */}}
{{- define "crops.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Requests and limits are required: a container without them is a render error. */}}
{{- define "crops.resources" -}}
{{- $r := required "resources are required" . -}}
requests:
  {{- toYaml (required "resources.requests is required" $r.requests) | nindent 2 }}
limits:
  {{- toYaml (required "resources.limits is required" $r.limits) | nindent 2 }}
{{- end }}

{{/* GPU scheduling for a pod spec. */}}
{{- define "crops.gpuScheduling" -}}
{{- with .Values.gpu.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.gpu.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Serverless (Knative) or Standard (RawDeployment). */}}
{{- define "crops.serverless" -}}
{{- if eq .Values.serving.mode "Serverless" -}}true{{- else if eq .Values.serving.mode "Standard" -}}{{- else -}}
{{- fail (printf "serving.mode must be Standard or Serverless, got %q" .Values.serving.mode) -}}
{{- end -}}
{{- end }}

{{/* KServe's in-cluster URL of a predictor, optionally through a Knative tag. */}}
{{- define "crops.predictorUrl" -}}
{{- $ := index . 0 -}}{{- $name := index . 1 -}}{{- $tag := index . 2 -}}
{{- if $tag -}}
{{ printf "http://%s-%s-predictor.%s.svc.cluster.local" $tag $name $.Release.Namespace }}
{{- else -}}
{{ printf "http://%s-predictor.%s.svc.cluster.local" $name $.Release.Namespace }}
{{- end -}}
{{- end }}

{{/* The log prefix the A/B analysis reads (abtest.logs; empty: <storage.mountPath>/logs, on
the artifacts volume). */}}
{{- define "crops.logs" -}}
{{ .Values.abtest.logs | default (printf "%s/logs" (trimSuffix "/" .Values.storage.mountPath)) }}
{{- end }}

{{/* Where the logsink writes: <the log prefix>/request_log (crops.abtest.layout's folder), which
must be on the artifacts volume, the sink's only writable mount. */}}
{{- define "crops.requestLogDir" -}}
{{- $logs := trimSuffix "/" (include "crops.logs" .) -}}
{{- $mount := trimSuffix "/" .Values.storage.mountPath -}}
{{- if not (hasPrefix (printf "%s/" $mount) (printf "%s/" $logs)) -}}
{{- fail (printf "logsink.enabled: the logsink writes <abtest.logs>/request_log on the artifacts volume (storage.mountPath %s), but abtest.logs is %q; set logsink.enabled=false and point serving.requestLog.url at a collector that writes there, or put abtest.logs on the volume" .Values.storage.mountPath $logs) -}}
{{- end -}}
{{ printf "%s/request_log" $logs }}
{{- end }}

{{/* The logsink's Deployment and Service. */}}
{{- define "crops.logsinkName" -}}
crops-logsink
{{- end }}

{{/* The logsink Service's in-cluster URL (crops.k8s.platform.Platform.logsink_url). */}}
{{- define "crops.logsinkUrl" -}}
{{ printf "http://%s.%s.svc.cluster.local:%d" (include "crops.logsinkName" .) .Release.Namespace (int .Values.ports.logsink) }}
{{- end }}

{{/* Where the predictors send KServe's payload logs: serving.requestLog.url, else the logsink
when it is enabled, else nothing (off). crops.k8s.platform.Platform.request_log_url says the
same for the predictors built at run time. */}}
{{- define "crops.requestLogUrl" -}}
{{- if .Values.serving.requestLog.url -}}
{{ .Values.serving.requestLog.url }}
{{- else if .Values.logsink.enabled -}}
{{ include "crops.logsinkUrl" . }}
{{- end -}}
{{- end }}
