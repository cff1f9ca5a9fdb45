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
{{- if and (not .Values.serviceAccount.create) .Values.serviceAccount.gcpServiceAccount -}}
{{- fail "serviceAccount.gcpServiceAccount needs serviceAccount.create: true (the chart annotates the ServiceAccount it creates); with your own ServiceAccount, annotate it with iam.gke.io/gcp-service-account yourself and leave gcpServiceAccount empty" -}}
{{- end -}}
{{- if eq (int .Values.admin.port) 8080 -}}
{{- fail "admin.port must not be 8080, the API's port (0: no admin port)" -}}
{{- end -}}
{{- /* What shutting down can take (docs/operations.md): the preStop wait, the drain, requests in
       flight, the answer window of those still running then (7 s: answered 503 shutting-down),
       settling writes, the audit flush (every sink at once, 5 s in all). */ -}}
{{- $shutdown := .Values.shutdown -}}
{{- $needed := add (int $shutdown.preStopSleepSeconds) (ceil $shutdown.drainSeconds | int) (ceil $shutdown.requestTimeoutSeconds | int) 7 (ceil .Values.config.settleSeconds | int) 5 -}}
{{- if lt (int $shutdown.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + drainSeconds + requestTimeoutSeconds + 7 for the answer window + config.settleSeconds + 5 for the audit flush (%d)" (int $shutdown.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- $budget := .Values.podDisruptionBudget -}}
{{- if $budget.enabled -}}
{{- $max := toString $budget.maxUnavailable -}}
{{- $min := toString $budget.minAvailable -}}
{{- if eq (eq $max "") (eq $min "") -}}
{{- fail "podDisruptionBudget: set exactly one of maxUnavailable (e.g. 1) and minAvailable (\"\" for the other)" -}}
{{- end -}}
{{- $pods := ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled | int -}}
{{- $podsFrom := ternary "autoscaling.minReplicas" "replicaCount" .Values.autoscaling.enabled -}}
{{- if and (ne $min "") (or (eq $min "100%") (and (not (hasSuffix "%" $min)) (ge (int $min) $pods))) -}}
{{- fail (printf "podDisruptionBudget.minAvailable (%s) keeps every pod of %s (%d): no node could ever be drained; use podDisruptionBudget.maxUnavailable: 1 (and minAvailable: \"\")" $min $podsFrom $pods) -}}
{{- end -}}
{{- end -}}
{{- end -}}
