{{/*
Names. The release's base name is `fullname` (the release name, or
"<release>-gateway" when the release name does not contain "gateway"); every object
of the gateway tier is named from it, the control plane's from `discovery.name`.
*/}}
{{- define "gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "gateway" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-gateway" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gateway.discoveryName" -}}
{{- default (printf "%s-discovery" (include "gateway.fullname" .)) .Values.discovery.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Cluster-scoped RBAC objects and namespaced Roles share this name. */}}
{{- define "gateway.discoveryRbacName" -}}
{{- printf "%s-discovery" (include "gateway.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gateway.commonLabels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: api-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gateway.discoverySelectorLabels" -}}
app.kubernetes.io/name: discovery
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gateway.labels" -}}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{ include "gateway.commonLabels" . }}
{{- end -}}

{{- define "gateway.discoveryLabels" -}}
{{ include "gateway.discoverySelectorLabels" . }}
app.kubernetes.io/component: control-plane
{{ include "gateway.commonLabels" . }}
{{- end -}}

{{- define "gateway.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Secret names: the user's (existingSecret) or the one the chart creates. */}}
{{- define "gateway.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "gateway.fullname" .)) .Values.gateway.adminToken.existingSecret -}}
{{- end -}}

{{- define "gateway.discoveryTokenSecret" -}}
{{- default (printf "%s-token" (include "gateway.discoveryName" .)) .Values.discovery.token.existingSecret -}}
{{- end -}}

{{- define "gateway.discoveryTlsSecret" -}}
{{- default (printf "%s-tls" (include "gateway.discoveryName" .)) .Values.discovery.tls.existingSecret -}}
{{- end -}}

{{- define "gateway.configMapName" -}}
{{- default (printf "%s-config" (include "gateway.fullname" .)) .Values.gateway.existingConfigMap -}}
{{- end -}}

{{/* Where the chart mounts what it wires into the gateway config. */}}
{{- define "gateway.adminTokenFile" -}}/var/run/secrets/gateway-admin/token{{- end -}}
{{- define "gateway.discoveryTokenFile" -}}/var/run/secrets/discovery/token{{- end -}}
{{- define "gateway.discoveryCaFile" -}}/var/run/secrets/discovery-ca/ca.crt{{- end -}}
{{- define "gateway.discoveryTlsDir" -}}/var/run/secrets/discovery-tls{{- end -}}
{{- define "gateway.redisPasswordFile" -}}/var/run/secrets/redis/password{{- end -}}

{{/*
The gateway config: `gateway.config` from the values with the sections the chart
owns laid over it (listener and admin addresses on the container ports, the admin
token file, the control plane's URL and token, Redis), so the ports, Secrets and
mounts can never disagree with the file.
*/}}
{{- define "gateway.config" -}}
{{- $cfg := deepCopy (default dict .Values.gateway.config) -}}
{{- if not (hasKey $cfg "listeners") -}}
{{- $_ := set $cfg "listeners" (list (dict "name" "public" "address" (printf "0.0.0.0:%v" .Values.gateway.ports.http))) -}}
{{- end -}}
{{- $admin := default dict (get $cfg "admin") -}}
{{- $_ := set $admin "address" (printf "0.0.0.0:%v" .Values.gateway.ports.admin) -}}
{{- $_ := set $admin "token_file" (include "gateway.adminTokenFile" .) -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- if .Values.discovery.enabled -}}
{{- $disc := default dict (get $cfg "discovery") -}}
{{- $_ := unset $disc "kubernetes" -}}
{{- $url := printf "https://%s.%s:%v" (include "gateway.discoveryName" .) .Release.Namespace .Values.discovery.port -}}
{{- $_ := set $disc "control_plane" (dict "url" $url "token_file" (include "gateway.discoveryTokenFile" .) "ca_file" (include "gateway.discoveryCaFile" .)) -}}
{{- $_ := set $cfg "discovery" $disc -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- $server := default dict (get $cfg "server") -}}
{{- $redis := default dict (get $server "redis") -}}
{{- $_ := set $redis "url" .Values.redis.url -}}
{{- $_ := set $redis "timeout" .Values.redis.timeout -}}
{{- if .Values.redis.password.existingSecret -}}
{{- $_ := set $redis "password_file" (include "gateway.redisPasswordFile" .) -}}
{{- end -}}
{{- $_ := set $server "redis" $redis -}}
{{- $_ := set $cfg "server" $server -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The discovery config, likewise: listen port and token file are the chart's. */}}
{{- define "gateway.discoveryConfig" -}}
{{- $cfg := deepCopy (default dict .Values.discovery.config) -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%v" .Values.discovery.port) -}}
{{- $_ := set $cfg "token_file" (include "gateway.discoveryTokenFile" .) -}}
{{- $dir := include "gateway.discoveryTlsDir" . -}}
{{- $_ := set $cfg "tls" (dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir)) -}}
{{- if eq .Values.discovery.rbac.scope "namespaced" -}}
{{- $watch := default dict (get $cfg "watch") -}}
{{- $_ := set $watch "namespaces" .Values.discovery.rbac.namespaces -}}
{{- $_ := set $cfg "watch" $watch -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod-level hardening shared by both Deployments. */}}
{{- define "gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.uid }}
runAsGroup: {{ .Values.securityContext.uid }}
fsGroup: {{ .Values.securityContext.uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "gateway.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/*
Secrets and ConfigMaps a pod mounts that this release does not create: the
cross-check (.ci/crosscheck.py) accepts a missing object only when it is listed here.
*/}}
{{- define "gateway.userProvided" -}}
{{- $out := list -}}
{{- if .Values.gateway.existingConfigMap -}}{{- $out = append $out (printf "ConfigMap/%s" .Values.gateway.existingConfigMap) -}}{{- end -}}
{{- if .Values.gateway.adminToken.existingSecret -}}{{- $out = append $out (printf "Secret/%s" .Values.gateway.adminToken.existingSecret) -}}{{- end -}}
{{- if and .Values.discovery.enabled .Values.discovery.token.existingSecret -}}{{- $out = append $out (printf "Secret/%s" .Values.discovery.token.existingSecret) -}}{{- end -}}
{{- if and .Values.discovery.enabled .Values.discovery.tls.existingSecret -}}{{- $out = append $out (printf "Secret/%s" .Values.discovery.tls.existingSecret) -}}{{- end -}}
{{- if and .Values.redis.enabled .Values.redis.password.existingSecret -}}{{- $out = append $out (printf "Secret/%s" .Values.redis.password.existingSecret) -}}{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* What discovery reads, and nothing more: no write verb, no wildcard. */}}
{{- define "gateway.discoveryRules" -}}
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["endpoints"]      # only used with `source: endpoints`
  verbs: ["list", "watch"]
{{- end -}}
