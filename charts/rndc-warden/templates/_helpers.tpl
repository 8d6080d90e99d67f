{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "rndc-warden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or <release> when it already contains the chart name.
*/}}
{{- define "rndc-warden.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rndc-warden.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rndc-warden.labels" -}}
helm.sh/chart: {{ include "rndc-warden.chart" . }}
{{ include "rndc-warden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rndc-warden
{{- end }}

{{- define "rndc-warden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rndc-warden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rndc-warden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rndc-warden.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The username the rotator's writes arrive with; the validating webhook exempts it from the
annotation tamper rules.
*/}}
{{- define "rndc-warden.serviceAccountUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "rndc-warden.serviceAccountName" .) }}
{{- end }}

{{- define "rndc-warden.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Names of the webhook configurations. */}}
{{- define "rndc-warden.mutatingName" -}}
{{- printf "%s-mutating" (include "rndc-warden.fullname" .) }}
{{- end }}
{{- define "rndc-warden.validatingName" -}}
{{- printf "%s-validating" (include "rndc-warden.fullname" .) }}
{{- end }}

{{/* Secret holding the serving certificate. */}}
{{- define "rndc-warden.certSecretName" -}}
{{- if eq .Values.certificates.mode "provided" }}
{{- required "certificates.secretName is required when certificates.mode is provided" .Values.certificates.secretName }}
{{- else }}
{{- default (printf "%s-tls" (include "rndc-warden.fullname" .)) .Values.certificates.secretName }}
{{- end }}
{{- end }}

{{/* The cert-manager Certificate of the serving certificate. */}}
{{- define "rndc-warden.servingCertName" -}}
{{- printf "%s-serving" (include "rndc-warden.fullname" .) }}
{{- end }}

{{/* Name of the leader-election Lease. */}}
{{- define "rndc-warden.leaseName" -}}
{{- printf "%s-rotator" (include "rndc-warden.fullname" .) }}
{{- end }}

{{/*
DNS names (or IPs) the serving certificate must carry, comma-separated: the Service's names and,
with webhook.url, the URL's host.
*/}}
{{- define "rndc-warden.certDnsNames" -}}
{{- $svc := include "rndc-warden.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) }}
{{- with .Values.webhook.url }}
{{- $names = append $names (urlParse .).hostname }}
{{- end }}
{{- join "," ($names | uniq) }}
{{- end }}

{{/*
caBundle of the webhook configurations, base64 (empty when unknown yet).
- provided: the PEM from values.
- self-managed: what the binary injected, read back from the live configuration so that
  `helm upgrade` never wipes it; before the first injection, `ca.crt` of the certificate Secret.
- cert-manager: injected by cainjector (inject-ca-from); kept from the live object the same way.
Under `helm template` lookup returns nothing, so the field is left out.
*/}}
{{- define "rndc-warden.caBundle" -}}
{{- $mode := .Values.certificates.mode }}
{{- if eq $mode "provided" }}
{{- required "certificates.provided.caBundle (PEM) is required when certificates.mode is provided" .Values.certificates.provided.caBundle | b64enc }}
{{- else }}
{{- $found := "" }}
{{- range $kind, $name := dict "MutatingWebhookConfiguration" (include "rndc-warden.mutatingName" .) "ValidatingWebhookConfiguration" (include "rndc-warden.validatingName" .) }}
{{- if not $found }}
{{- $live := lookup "admissionregistration.k8s.io/v1" $kind "" $name }}
{{- range $hook := ($live.webhooks | default list) }}
{{- if and (not $found) $hook.clientConfig $hook.clientConfig.caBundle }}
{{- $found = $hook.clientConfig.caBundle }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not $found) (eq $mode "self-managed") }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "rndc-warden.certSecretName" .) }}
{{- if and $secret $secret.data (index $secret.data "ca.crt") }}
{{- $found = index $secret.data "ca.crt" }}
{{- end }}
{{- end }}
{{- $found }}
{{- end }}
{{- end }}

{{/*
clientConfig of a webhook; argument: (dict "ctx" $ "path" "/mutate").
*/}}
{{- define "rndc-warden.clientConfig" -}}
{{- $ctx := .ctx -}}
{{- if $ctx.Values.webhook.url -}}
url: {{ printf "%s%s" (trimSuffix "/" $ctx.Values.webhook.url) .path | quote }}
{{- else -}}
service:
  name: {{ include "rndc-warden.fullname" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  path: {{ .path }}
  port: {{ $ctx.Values.service.port }}
{{- end }}
{{- with (include "rndc-warden.caBundle" $ctx) }}
caBundle: {{ . }}
{{- end }}
{{- end }}

{{/*
namespaceSelector: the user's selector plus the exclusion of the release namespace and kube-system.
*/}}
{{- define "rndc-warden.namespaceSelector" -}}
{{- $sel := deepCopy (.Values.webhook.namespaceSelector | default dict) }}
{{- $exclude := dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" (list .Release.Namespace "kube-system" | uniq) }}
{{- $_ := set $sel "matchExpressions" (append ($sel.matchExpressions | default list) $exclude) }}
{{- toYaml $sel }}
{{- end }}

{{/*
The webhooks of one configuration; argument: (dict "ctx" $ "path" "/mutate" "mutating" true).
One webhook for the Bindy kinds, one for labelled key Secrets.
*/}}
{{- define "rndc-warden.webhooks" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values.webhook }}
{{- $prefix := ternary "mutate" "validate" .mutating -}}
- name: {{ $prefix }}-bindy.rndc-warden.bindy.firestoned.io
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: {{ $v.failurePolicy }}
  timeoutSeconds: {{ $v.timeoutSeconds }}
  matchPolicy: Equivalent
  {{- if .mutating }}
  reinvocationPolicy: Never
  {{- end }}
  clientConfig:
    {{- include "rndc-warden.clientConfig" (dict "ctx" $ctx "path" .path) | nindent 4 }}
  namespaceSelector:
    {{- include "rndc-warden.namespaceSelector" $ctx | nindent 4 }}
  rules:
    - apiGroups: ["bindy.firestoned.io"]
      apiVersions: ["v1beta1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["bind9instances", "bind9clusters"]
      scope: Namespaced
    - apiGroups: ["bindy.firestoned.io"]
      apiVersions: ["v1beta1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["clusterbind9providers"]
      scope: Cluster
  {{- with $v.matchConditions }}
  matchConditions:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- name: {{ $prefix }}-secrets.rndc-warden.bindy.firestoned.io
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: {{ $v.failurePolicy }}
  timeoutSeconds: {{ $v.timeoutSeconds }}
  matchPolicy: Equivalent
  {{- if .mutating }}
  reinvocationPolicy: Never
  {{- end }}
  clientConfig:
    {{- include "rndc-warden.clientConfig" (dict "ctx" $ctx "path" .path) | nindent 4 }}
  namespaceSelector:
    {{- include "rndc-warden.namespaceSelector" $ctx | nindent 4 }}
  objectSelector:
    {{- $os := $v.objectSelector | default dict }}
    {{- if not (or $os.matchLabels $os.matchExpressions) }}
    {{- fail "webhook.objectSelector must select key Secrets (e.g. matchLabels bindy.firestoned.io/rndc-key: \"true\"); an empty selector would send every Secret of the cluster to the webhook" }}
    {{- end }}
    {{- toYaml $os | nindent 4 }}
  rules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["secrets"]
      scope: Namespaced
  {{- with $v.matchConditions }}
  matchConditions:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Annotations shared by both webhook configurations. */}}
{{- define "rndc-warden.webhookAnnotations" -}}
{{- $ann := deepCopy (.Values.webhook.annotations | default dict) }}
{{- if eq .Values.certificates.mode "cert-manager" }}
{{- $_ := set $ann "cert-manager.io/inject-ca-from" (printf "%s/%s" .Release.Namespace (include "rndc-warden.servingCertName" .)) }}
{{- end }}
{{- with $ann }}
{{- toYaml . }}
{{- end }}
{{- end }}
