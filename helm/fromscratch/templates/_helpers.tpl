{{/* Object-name prefix: the release name unless overridden (kept short: KubeRay appends). */}}
{{- define "fromscratch.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "fromscratch.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "mlflow") */}}
{{- define "fromscratch.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image reference of a flavour: (dict "root" $ "flavour" "cpu") */}}
{{- define "fromscratch.image" -}}
{{- $img := index .root.Values.images .flavour -}}
{{- if not $img -}}{{- fail (printf "unknown image flavour %q (cpu or cuda)" .flavour) -}}{{- end -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{- define "fromscratch.rayClusterName" -}}
{{- default (printf "%s-ray" (include "fromscratch.fullname" .)) .Values.ray.clusterName -}}
{{- end -}}

{{- define "fromscratch.mlflowUri" -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" .Values.mlflow.service.name .Release.Namespace .Values.mlflow.service.port -}}
{{- end -}}

{{- define "fromscratch.rayJobsAddress" -}}
{{- printf "http://%s-head-svc.%s.svc.cluster.local:8265" (include "fromscratch.rayClusterName" .) .Release.Namespace -}}
{{- end -}}

{{- define "fromscratch.postgresHost" -}}
{{- if .Values.postgres.enabled -}}
{{- printf "%s-postgres.%s.svc.cluster.local" (include "fromscratch.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "postgres.external.host is required when postgres.enabled=false" .Values.postgres.external.host -}}
{{- end -}}
{{- end -}}

{{- define "fromscratch.postgresPort" -}}
{{- if .Values.postgres.enabled }}5432{{ else }}{{ .Values.postgres.external.port }}{{ end -}}
{{- end -}}

{{/* Use inside `if .Values.images.pullSecrets` so an empty list leaves no stray line. */}}
{{- define "fromscratch.imagePullSecrets" -}}
imagePullSecrets:
{{- range .Values.images.pullSecrets }}
  - name: {{ . }}
{{- end }}
{{- end -}}

{{/* Environment of every pod that runs project code (Ray head/workers): S3, MLflow. */}}
{{- define "fromscratch.runtimeEnv" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.s3 }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.s3 }}, key: AWS_SECRET_ACCESS_KEY}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- if .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ .Values.s3.endpoint | quote }}
{{- end }}
{{- if .Values.mlflow.enabled }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "fromscratch.mlflowUri" . | quote }}
{{- end }}
{{- if and .Values.mlflow.enabled .Values.mlflow.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.mlflow }}, key: MLFLOW_TRACKING_USERNAME}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.mlflow }}, key: MLFLOW_TRACKING_PASSWORD}
{{- end }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: TOKENIZERS_PARALLELISM
  value: "false"
{{- end -}}
