{{/*
The chart's name, "<release>-<chart>" full name (63 characters at most: a DNS label), labels.
*/}}
{{- define "spangate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "spangate.fullname" -}}
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

{{- define "spangate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spangate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "spangate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "spangate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "spangate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "spangate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image: by digest when one is given, else by tag (default: the chart's appVersion). */}}
{{- define "spangate.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the policy: the user's, or the chart's. */}}
{{- define "spangate.policyConfigMap" -}}
{{- .Values.policy.existingConfigMap | default (printf "%s-policy" (include "spangate.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{/* Refusals: settings that cannot work, said at install time instead of in a crash loop. */}}
{{- define "spangate.validate" -}}
{{- if and (not .Values.policy.existingConfigMap) (empty .Values.policy.files) -}}
{{- fail "policy: set policy.files (the policy) or policy.existingConfigMap (a ConfigMap holding it)" -}}
{{- end -}}
{{- $needed := add (int .Values.shutdown.preStopSleepSeconds) 15 (int .Values.config.settleSeconds) -}}
{{- if lt (int .Values.shutdown.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + 15 + config.settleSeconds (%d): in-flight requests (10 s), settling writes and the audit flush (5 s) need it" (int .Values.shutdown.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}
