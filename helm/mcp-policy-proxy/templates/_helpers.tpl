{{/* Names and labels. */}}
{{- define "mcp-policy-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mcp-policy-proxy.fullname" -}}
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

{{- define "mcp-policy-proxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mcp-policy-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The proxy's pods (the helm test pod has other labels, so the Service never sends to it). */}}
{{- define "mcp-policy-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-policy-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "mcp-policy-proxy.testLabels" -}}
app.kubernetes.io/name: {{ include "mcp-policy-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{- define "mcp-policy-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mcp-policy-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mcp-policy-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the pod's volumes are mounted (the config names these paths). */}}
{{- define "mcp-policy-proxy.configDir" -}}/etc/mcp-policy-proxy/config{{- end }}
{{- define "mcp-policy-proxy.policiesDir" -}}/etc/mcp-policy-proxy/policies{{- end }}
{{- define "mcp-policy-proxy.secretsDir" -}}/run/secrets/mcp-policy-proxy{{- end }}
{{- define "mcp-policy-proxy.dataDir" -}}/var/lib/mcp-policy-proxy{{- end }}
{{- define "mcp-policy-proxy.tokenFile" -}}{{ include "mcp-policy-proxy.dataDir" . }}/upstream-grant.json{{- end }}

{{- define "mcp-policy-proxy.ingressBackend" -}}
backend:
  service:
    name: {{ include "mcp-policy-proxy.fullname" . }}
    port:
      name: http
{{- end }}

{{- define "mcp-policy-proxy.dataClaim" -}}
{{- default (printf "%s-data" (include "mcp-policy-proxy.fullname" .)) .Values.upstream.oauth.persistence.existingClaim }}
{{- end }}

{{/* "true" when the pods are several (replicas or autoscaling): they are then wired together
     (config cluster, POD_IP, the cluster ports). Several workers of one pod need no wiring. */}}
{{- define "mcp-policy-proxy.clustered" -}}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/* The cluster ports, as JSON [first, last]: worker i on clusterPort + i. */}}
{{- define "mcp-policy-proxy.clusterPorts" -}}
{{- $first := int .Values.clusterPort }}
{{- toJson (list $first (add $first (int .Values.workers) -1)) }}
{{- end }}

{{/* The Secret the pod mounts: the one given, or the chart's own. */}}
{{- define "mcp-policy-proxy.secretName" -}}
{{- default (printf "%s-secrets" (include "mcp-policy-proxy.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* The key (in the Secret) of secret `name` (urlTokenKey, sessionKey, upstreamAuthorization),
     or "" when that secret is not used: an existing Secret provides every key secrets.keys names,
     the chart's own only those given a value. */}}
{{- define "mcp-policy-proxy.secretKey" -}}
{{- $s := .root.Values.secrets }}
{{- $key := index $s.keys .name | default "" }}
{{- if or $s.existingSecret (index $s .name) }}{{ $key }}{{ end }}
{{- end }}

{{/* The secrets in use, as JSON: {"<name>": "<key in the Secret>"}. */}}
{{- define "mcp-policy-proxy.secretsUsed" -}}
{{- $used := dict }}
{{- range $name := list "urlTokenKey" "sessionKey" "upstreamAuthorization" }}
{{- $key := include "mcp-policy-proxy.secretKey" (dict "root" $ "name" $name) }}
{{- if $key }}{{ $_ := set $used $name $key }}{{ end }}
{{- end }}
{{- toJson $used }}
{{- end }}

{{/* Every file under secretsDir, as JSON {"<role>": {"kind": "secret" or "configMap", "name",
     "key", "path"}}: the secrets of the chart's Secret or existingSecret (role: the value's name),
     then the Secrets (and a CA ConfigMap) the upstream values name. Each role's config key is set
     by mcp-policy-proxy.config. */}}
{{- define "mcp-policy-proxy.secretFiles" -}}
{{- $files := dict }}
{{- $secret := include "mcp-policy-proxy.secretName" . }}
{{- range $name, $key := include "mcp-policy-proxy.secretsUsed" . | fromJson }}
{{- $_ := set $files $name (dict "kind" "secret" "name" $secret "key" $key "path" $key) }}
{{- end }}
{{- $up := .Values.upstream }}
{{- $refs := list }}
{{- if $up.oauth.enabled }}
{{- $refs = append $refs (list "oauthClientSecret" $up.oauth.clientSecret.secretName $up.oauth.clientSecret.key "upstream_oauth_client_secret") }}
{{- $refs = append $refs (list "oauthTokenKey" $up.oauth.tokenKey.secretName $up.oauth.tokenKey.key "upstream_oauth_token_key") }}
{{- end }}
{{- $refs = append $refs (list "egressCredentials" $up.proxy.credentials.secretName $up.proxy.credentials.key "egress_proxy_credentials") }}
{{- with $up.tls.clientCert }}
{{- $refs = append $refs (list "tlsCert" .secretName .certKey "upstream_tls_client.crt") }}
{{- $refs = append $refs (list "tlsKey" .secretName .keyKey "upstream_tls_client.key") }}
{{- if .keyPasswordKey }}{{ $refs = append $refs (list "tlsKeyPassword" .secretName .keyPasswordKey "upstream_tls_key_password") }}{{ end }}
{{- end }}
{{- $refs = append $refs (list "tlsCa" $up.tls.ca.secretName $up.tls.ca.key "upstream_tls_ca.pem") }}
{{- range $refs }}
{{- if index . 1 }}{{ $_ := set $files (index . 0) (dict "kind" "secret" "name" (index . 1) "key" (index . 2) "path" (index . 3)) }}{{ end }}
{{- end }}
{{- with $up.tls.ca }}{{ if .configMapName }}
{{- $_ := set $files "tlsCa" (dict "kind" "configMap" "name" .configMapName "key" .key "path" "upstream_tls_ca.pem") }}
{{- end }}{{ end }}
{{- toJson $files }}
{{- end }}

{{/* "true" when URL tokens are configured (a URL token key): their paths start with the token. */}}
{{- define "mcp-policy-proxy.urlTokens" -}}
{{- $auth := get .Values.config "auth" | default dict }}
{{- $used := include "mcp-policy-proxy.secretsUsed" . | fromJson }}
{{- if or (hasKey $used "urlTokenKey") (get $auth "url_token_key") (get $auth "url_token_key_file") }}true{{ end }}
{{- end }}

{{/* The paths an Ingress or the HTTPRoute route to the proxy, as JSON [{"path", "type"}], type
     Prefix or RegularExpression (proxy/transport/paths.py has the shapes; docs/deploy.md, "What an
     Ingress publishes"). The token pattern: a URL token is URL-safe base64 (proxy/auth/tokens.py). */}}
{{- define "mcp-policy-proxy.publicPaths" -}}
{{- $auth := get .Values.config "auth" | default dict }}
{{- $paths := list }}
{{- if eq .Values.publicPaths "all" }}
{{- $paths = list (dict "path" "/" "type" "Prefix") }}
{{- else }}
{{- range list "/mcp" "/sse" "/messages" }}{{ $paths = append $paths (dict "path" . "type" "Prefix") }}{{ end }}
{{- if or (get $auth "jwt") (get $auth "authorization_servers") }}
{{- $paths = append $paths (dict "path" "/.well-known/oauth-protected-resource" "type" "Prefix") }}
{{- end }}
{{- if include "mcp-policy-proxy.urlTokens" . }}
{{- $paths = append $paths (dict "path" "/[A-Za-z0-9_-]+/(mcp|sse|messages)/?$" "type" "RegularExpression") }}
{{- end }}
{{- end }}
{{- toJson $paths }}
{{- end }}

{{/* Every policy file as JSON {"<path in the policy directory>": "<content>"}: the shipped copy in
     files/policies, then policies.files (a file of the same path replaces the shipped one). */}}
{{- define "mcp-policy-proxy.policyFiles" -}}
{{- $files := dict }}
{{- if .Values.policies.includeShipped }}
{{- range $path, $_ := .Files.Glob "files/policies/**" }}
{{- $_ := set $files (trimPrefix "files/policies/" $path) ($.Files.Get $path) }}
{{- end }}
{{- end }}
{{- range $path, $content := .Values.policies.files }}
{{- $_ := set $files $path $content }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/* A ConfigMap key for a policy path (keys hold no "/"; the volume's items put each back at its path). */}}
{{- define "mcp-policy-proxy.policyKey" -}}
{{- replace "/" "__" . }}
{{- end }}

{{- define "mcp-policy-proxy.rollOnPolicyChange" -}}
{{- if kindIs "bool" .Values.policies.rollOnChange }}{{ .Values.policies.rollOnChange }}{{ else }}{{ .Values.opa.enabled }}{{ end }}
{{- end }}

{{- define "mcp-policy-proxy.upstreamUrl" -}}
{{- if eq .Values.mode "sidecar" }}
{{- with .Values.upstream.container }}{{ printf "http://127.0.0.1:%d%s" (int .port) .path }}{{ end }}
{{- else }}
{{- .Values.upstream.url }}
{{- end }}
{{- end }}

{{- define "mcp-policy-proxy.upstreamSseUrl" -}}
{{- if eq .Values.mode "sidecar" }}
{{- with .Values.upstream.container }}{{ if .ssePath }}{{ printf "http://127.0.0.1:%d%s" (int .port) .ssePath }}{{ end }}{{ end }}
{{- else }}
{{- .Values.upstream.sseUrl }}
{{- end }}
{{- end }}

{{- define "mcp-policy-proxy.shutdownGrace" -}}
{{- $limits := get .Values.config "limits" | default dict }}
{{- $grace := 25 }}
{{- if hasKey $limits "shutdown_grace_s" }}{{ $grace = get $limits "shutdown_grace_s" }}{{ end }}
{{- int (ceil (float64 $grace)) }}
{{- end }}

{{/* SIGTERM comes after preStop; the drain then takes up to shutdown_grace_s; 5 s to exit. */}}
{{- define "mcp-policy-proxy.terminationGrace" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (int (include "mcp-policy-proxy.shutdownGrace" .)) 5 }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}{{ $needed }}
{{- else }}{{ int .Values.terminationGracePeriodSeconds }}{{ end }}
{{- end }}

{{/* The proxy's config file: the user's `config` with the keys the chart owns filled in. */}}
{{- define "mcp-policy-proxy.config" -}}
{{- $c := deepCopy .Values.config }}
{{- $files := include "mcp-policy-proxy.secretFiles" . | fromJson }}
{{- $secrets := include "mcp-policy-proxy.secretsDir" . }}
{{- $_ := set $c "listen" (dict "host" "0.0.0.0" "port" (int .Values.containerPort) "workers" (int .Values.workers)) }}
{{- if include "mcp-policy-proxy.clustered" . }}
{{- /* POD_IP: the downward API's status.podIP (deployment.yaml), expanded by the proxy at load */}}
{{- $_ := set $c "cluster" (dict "listen" (printf "0.0.0.0:%d" (int .Values.clusterPort)) "advertise" "${POD_IP}") }}
{{- end }}
{{- $up := get $c "upstream" | default dict }}
{{- $_ := set $up "url" (include "mcp-policy-proxy.upstreamUrl" .) }}
{{- with include "mcp-policy-proxy.upstreamSseUrl" . }}{{ $_ := set $up "sse_url" . }}{{ end }}
{{- with .Values.upstream.oauth }}{{ if .enabled }}
{{- $oauth := get $up "oauth" | default dict }}
{{- $_ := set $oauth "scopes" .scopes }}
{{- $_ := set $oauth "token_file" (include "mcp-policy-proxy.tokenFile" $) }}
{{- $_ := set $oauth "redirect_port" (int .redirectPort) }}
{{- with .clientId }}{{ $_ := set $oauth "client_id" . }}{{ end }}
{{- $_ := set $up "oauth" $oauth }}
{{- end }}{{ end }}
{{- with .Values.upstream.proxy.url }}
{{- $_ := set $up "proxy" (dict "url" .) }}
{{- end }}
{{- /* each secret file's key: [section of upstream ("" for auth), key] */}}
{{- $keys := dict "urlTokenKey" (list "" "url_token_key_file") "sessionKey" (list "" "session_key_file")
      "upstreamAuthorization" (list "headers" "Authorization_file")
      "oauthClientSecret" (list "oauth" "client_secret_file") "oauthTokenKey" (list "oauth" "token_key_file")
      "egressCredentials" (list "proxy" "credentials_file") "tlsCa" (list "tls" "ca_file")
      "tlsCert" (list "tls" "cert_file") "tlsKey" (list "tls" "key_file") "tlsKeyPassword" (list "tls" "key_password_file") }}
{{- $auth := get $c "auth" | default dict }}
{{- range $role, $file := $files }}
{{- $where := index $keys $role }}
{{- $path := printf "%s/%s" $secrets $file.path }}
{{- if eq (index $where 0) "" }}{{ $_ := set $auth (index $where 1) $path }}
{{- else }}
{{- $section := get $up (index $where 0) | default dict }}
{{- $_ := set $section (index $where 1) $path }}
{{- $_ := set $up (index $where 0) $section }}
{{- end }}
{{- end }}
{{- $_ := set $c "upstream" $up }}
{{- $policy := get $c "policy" | default dict }}
{{- $_ := set $policy "paths" (list (include "mcp-policy-proxy.policiesDir" .)) }}
{{- if .Values.opa.enabled }}
{{- $_ := set $policy "engine" "opa" }}
{{- $_ := set $policy "opa" (dict "url" (printf "http://127.0.0.1:%d" (int .Values.opa.port)) "timeout_ms" (int .Values.opa.timeoutMs)) }}
{{- end }}
{{- $_ := set $c "policy" $policy }}
{{- $_ := set $c "auth" $auth }}
{{- if not (get $c "servers") }}
{{- /* none yet: the proxy's own default server (an empty list is an error to it) */}}
{{- $_ := unset $c "servers" }}
{{- end }}
{{- toYaml $c }}
{{- end }}

{{/* Values the schema cannot judge alone: each refusal says what to set instead. */}}
{{- define "mcp-policy-proxy.validate" -}}
{{- $c := .Values.config }}
{{- $auth := get $c "auth" | default dict }}
{{- $up := get $c "upstream" | default dict }}
{{- $policy := get $c "policy" | default dict }}
{{- $used := include "mcp-policy-proxy.secretsUsed" . | fromJson }}
{{- $files := include "mcp-policy-proxy.secretFiles" . | fromJson }}
{{- $clustered := include "mcp-policy-proxy.clustered" . }}
{{- $oauth := .Values.upstream.oauth }}
{{- if hasKey $c "listen" }}
{{- fail "config.listen is set by the chart: the proxy listens on 0.0.0.0:<containerPort> with `workers` processes (set containerPort and workers)" }}
{{- end }}
{{- if hasKey $c "cluster" }}
{{- fail "config.cluster is set by the chart: with several replicas the pods reach each other on clusterPort at the pod's IP (set clusterPort)" }}
{{- end }}
{{- if or (hasKey $up "url") (hasKey $up "sse_url") }}
{{- fail "config.upstream.url and sse_url are set by the chart: give upstream.url / upstream.sseUrl (standalone) or upstream.container (sidecar)" }}
{{- end }}
{{- if hasKey $up "command" }}
{{- fail "config.upstream.command: the chart does not run stdio upstreams (the server would have to be in the proxy's image): run the server's HTTP transport in mode sidecar (upstream.container) instead" }}
{{- end }}
{{- range $key := list "paths" "engine" "opa" }}
{{- if hasKey $policy $key }}
{{- fail (printf "config.policy.%s is set by the chart: put policy files in policies.files (policies.includeShipped for the shipped ones) and use opa.enabled for the OPA engine" $key) }}
{{- end }}
{{- end }}
{{- range $name, $key := dict "urlTokenKey" "url_token_key" "sessionKey" "session_key" }}
{{- if and (hasKey $used $name) (or (hasKey $auth $key) (hasKey $auth (printf "%s_file" $key))) }}
{{- fail (printf "config.auth.%s and secrets.%s both give the key: keep one" $key $name) }}
{{- end }}
{{- end }}
{{- $headers := get $up "headers" | default dict }}
{{- if and (hasKey $used "upstreamAuthorization") (hasKey $headers "Authorization") }}
{{- fail "config.upstream.headers.Authorization and secrets.upstreamAuthorization both give the upstream credential: keep one" }}
{{- end }}
{{- if eq .Values.mode "standalone" }}
{{- if not .Values.upstream.url }}
{{- fail "mode standalone needs upstream.url: the upstream's Streamable HTTP endpoint, e.g. https://mcp.example.com/mcp" }}
{{- end }}
{{- else if not .Values.upstream.container.image.repository }}
{{- fail "mode sidecar needs upstream.container.image.repository: the upstream MCP server's image (and its port and path)" }}
{{- end }}
{{- if not (or (hasKey $used "urlTokenKey") (get $auth "url_token_key") (get $auth "url_token_key_file") (get $auth "api_tokens") (get $auth "jwt") (get $auth "anonymous")) }}
{{- fail "no authentication: the proxy listens beyond loopback and refuses anonymous clients there. Set secrets.urlTokenKey (URL tokens), config.auth.api_tokens or config.auth.jwt, or config.auth.anonymous: true" }}
{{- end }}
{{- if and (or $clustered (gt (int .Values.workers) 1)) (not (or (hasKey $used "sessionKey") (get $auth "session_key") (get $auth "session_key_file"))) }}
{{- fail "replicaCount > 1, autoscaling and workers > 1 need one session key shared by every worker and replica (session ids are bound to principals with it, and the requests they pass each other are signed with it: docs/scaling.md): set secrets.sessionKey, or secrets.existingSecret with secrets.keys.sessionKey" }}
{{- end }}
{{- with get (.Values.resources.limits | default dict) "cpu" }}
{{- $cpu := toString . }}
{{- $cores := float64 $cpu }}
{{- if hasSuffix "m" $cpu }}{{ $cores = divf (float64 (trimSuffix "m" $cpu)) 1000 }}{{ end }}
{{- if gt (float64 $.Values.workers) (ceil $cores) }}
{{- fail (printf "workers %d is more than resources.limits.cpu %s allows (one worker per core): lower workers or raise the limit" (int $.Values.workers) $cpu) }}
{{- end }}
{{- end }}
{{- if $clustered }}
{{- $ports := include "mcp-policy-proxy.clusterPorts" . | fromJsonArray }}
{{- $first := int (index $ports 0) }}{{ $last := int (index $ports 1) }}
{{- if gt $last 65535 }}
{{- fail (printf "clusterPort %d + workers - 1 is above 65535: worker i listens on clusterPort + i" $first) }}
{{- end }}
{{- $taken := dict "containerPort" .Values.containerPort }}
{{- if .Values.opa.enabled }}{{ $_ := set $taken "opa.port" .Values.opa.port }}{{ $_ := set $taken "opa.diagnosticPort" .Values.opa.diagnosticPort }}{{ end }}
{{- if eq .Values.mode "sidecar" }}{{ $_ := set $taken "upstream.container.port" .Values.upstream.container.port }}{{ end }}
{{- if $oauth.enabled }}{{ $_ := set $taken "upstream.oauth.redirectPort" $oauth.redirectPort }}{{ end }}
{{- range $name, $port := $taken }}
{{- if and (ge (int $port) $first) (le (int $port) $last) }}
{{- fail (printf "the cluster ports %d-%d (clusterPort + one per worker) include %s %d: move clusterPort" $first $last $name (int $port)) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $oauth.enabled }}
{{- if not $oauth.scopes }}
{{- fail "upstream.oauth.enabled needs upstream.oauth.scopes: what `upstream login` asks for, e.g. [conversations:read] (docs/missive.md)" }}
{{- end }}
{{- if or (hasKey $used "upstreamAuthorization") (hasKey $headers "Authorization") (hasKey $headers "Authorization_file") }}
{{- fail "upstream.oauth and an Authorization header (secrets.upstreamAuthorization, or its key in secrets.existingSecret, or config.upstream.headers) both give the upstream credential: keep one (with an existingSecret, set secrets.keys.upstreamAuthorization: \"\")" }}
{{- end }}
{{- range $key := list "token_file" "scopes" "client_id" "client_secret" "client_secret_file" "token_key" "token_key_file" "redirect_port" }}
{{- if hasKey (get $up "oauth" | default dict) $key }}
{{- fail (printf "config.upstream.oauth.%s is set by the chart: use the upstream.oauth values (scopes, clientId, clientSecret, tokenKey, redirectPort)" $key) }}
{{- end }}
{{- end }}
{{- with $oauth.persistence }}
{{- if and $clustered (not .shared) }}
{{- fail "upstream.oauth with replicaCount > 1 or autoscaling needs one token file every pod shares: a ReadWriteMany volume whose file locks hold across nodes, asserted with upstream.oauth.persistence.shared: true (copies of one grant refreshed apart break each other: docs/deploy.md)" }}
{{- end }}
{{- if and .shared .accessModes (not (has "ReadWriteMany" .accessModes)) }}
{{- fail "upstream.oauth.persistence.shared: true needs accessModes with ReadWriteMany (or [] for the default)" }}
{{- end }}
{{- end }}
{{- else if hasKey $up "oauth" }}
{{- fail "config.upstream.oauth needs upstream.oauth.enabled: true, which gives the token file a writable volume (the root filesystem is read-only)" }}
{{- end }}
{{- $https := or (hasPrefix "https://" (include "mcp-policy-proxy.upstreamUrl" .)) (hasPrefix "https://" (include "mcp-policy-proxy.upstreamSseUrl" .)) }}
{{- with .Values.upstream.tls }}
{{- if and .ca.secretName .ca.configMapName }}
{{- fail "upstream.tls.ca: give secretName or configMapName, not both" }}
{{- end }}
{{- if and (or .ca.secretName .ca.configMapName .clientCert.secretName) (not $https) }}
{{- fail "upstream.tls applies to an https:// upstream.url (standalone): a sidecar upstream is reached on http://127.0.0.1" }}
{{- end }}
{{- end }}
{{- $tls := get $up "tls" | default dict }}
{{- range $role, $key := dict "tlsCa" "ca_file" "tlsCert" "cert_file" "tlsKey" "key_file" "tlsKeyPassword" "key_password_file" }}
{{- if and (hasKey $files $role) (or (hasKey $tls $key) (hasKey $tls (trimSuffix "_file" $key))) }}
{{- fail (printf "config.upstream.tls.%s and upstream.tls both name the file: keep one" $key) }}
{{- end }}
{{- end }}
{{- with .Values.upstream.proxy }}
{{- if and .url (eq $.Values.mode "sidecar") }}
{{- fail "upstream.proxy.url: a sidecar upstream is reached on 127.0.0.1, never through an egress proxy (mode standalone only)" }}
{{- end }}
{{- if and .credentials.secretName (not .url) }}
{{- fail "upstream.proxy.credentials needs upstream.proxy.url: the egress proxy they are for" }}
{{- end }}
{{- if and .url (hasKey $up "proxy") }}
{{- fail "config.upstream.proxy and upstream.proxy.url both give the egress proxy: keep one" }}
{{- end }}
{{- end }}
{{- $paths := dict }}
{{- range $role, $file := $files }}
{{- if hasKey $paths $file.path }}
{{- fail (printf "secrets.keys: %q names a file the chart mounts for another secret; rename the key" $file.path) }}
{{- end }}
{{- $_ := set $paths $file.path $role }}
{{- end }}
{{- $policyFiles := include "mcp-policy-proxy.policyFiles" . | fromJson }}
{{- if not $policyFiles }}
{{- fail "no policies: keep policies.includeShipped: true or give policies.files" }}
{{- end }}
{{- $keys := dict }}
{{- range $path, $_ := $policyFiles }}
{{- $key := include "mcp-policy-proxy.policyKey" $path }}
{{- if hasKey $keys $key }}
{{- fail (printf "policies.files: %q and %q map to one ConfigMap key %q; rename one" (get $keys $key) $path $key) }}
{{- end }}
{{- $_ := set $keys $key $path }}
{{- end }}
{{- $needed := add (int .Values.preStopSleepSeconds) (int (include "mcp-policy-proxy.shutdownGrace" .)) }}
{{- if and (not (kindIs "invalid" .Values.terminationGracePeriodSeconds)) (le (int .Values.terminationGracePeriodSeconds) $needed) }}
{{- fail (printf "terminationGracePeriodSeconds %d must exceed preStopSleepSeconds + config.limits.shutdown_grace_s (%d), or the drain is cut short" (int .Values.terminationGracePeriodSeconds) $needed) }}
{{- end }}
{{- end }}
