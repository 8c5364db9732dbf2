{{/*
Names, labels, the TOML writer and the two server configs (central and node-local).
*/}}

{{- define "clusterdns.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clusterdns.fullname" -}}
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

{{- define "clusterdns.nodeLocalName" -}}
{{- printf "%s-node-local" (include "clusterdns.fullname" . | trunc 52 | trimSuffix "-") -}}
{{- end -}}

{{- define "clusterdns.upstreamServiceName" -}}
{{- default (printf "%s-upstream" .Values.service.name) .Values.nodeLocal.upstreamService.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clusterdns.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "clusterdns.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector of the central pods (Deployment, Services, PDB, anti-affinity). */}}
{{- define "clusterdns.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clusterdns.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Selector of the node-local pods (DaemonSet). */}}
{{- define "clusterdns.nodeLocalSelectorLabels" -}}
app.kubernetes.io/name: {{ include "clusterdns.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-local
{{- end -}}

{{- define "clusterdns.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "clusterdns.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "clusterdns.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* `ADDR:PORT` from (list ADDR PORT), with brackets around an IPv6 address. */}}
{{- define "clusterdns.hostPort" -}}
{{- $addr := index . 0 -}}
{{- $port := int (index . 1) -}}
{{- if contains ":" $addr -}}
{{- printf "[%s]:%d" $addr $port -}}
{{- else -}}
{{- printf "%s:%d" $addr $port -}}
{{- end -}}
{{- end -}}

{{/*
TOML writer. Helm's own toToml writes every number from a values file as a float (`ttl = 5.0`),
which the server rejects; this one writes integral numbers as integers. Values: strings (JSON
escapes are valid TOML), booleans, numbers, lists and maps (inline tables). The root map: its
scalars first, then one [table] per map.
*/}}
{{- define "clusterdns.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "clusterdns.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (floor $v) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $e := $v -}}{{- if $i }}, {{ end -}}{{- include "clusterdns.tomlValue" $e -}}{{- end -}}]
{{- else if kindIs "map" $v -}}
{{- if not $v -}}{{ "{}" }}{{- else -}}
{{ "{ " }}{{- range $i, $k := keys $v | sortAlpha -}}{{- if $i }}, {{ end -}}{{- include "clusterdns.tomlKey" $k }} = {{ include "clusterdns.tomlValue" (get $v $k) -}}{{- end -}}{{ " }" }}
{{- end -}}
{{- else -}}
{{- fail (printf "config: cannot write %v (a %s) as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{- define "clusterdns.toml" -}}
{{- $root := . -}}
{{- range $k := keys $root | sortAlpha -}}
{{- $v := get $root $k -}}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{ include "clusterdns.tomlKey" $k }} = {{ include "clusterdns.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $root | sortAlpha -}}
{{- $table := get $root $k -}}
{{- if and (kindIs "map" $table) $table }}

[{{ include "clusterdns.tomlKey" $k }}]
{{- range $k2 := keys $table | sortAlpha -}}
{{- $v := get $table $k2 -}}
{{- if not (kindIs "invalid" $v) }}
{{ include "clusterdns.tomlKey" $k2 }} = {{ include "clusterdns.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The central server's config, as TOML. */}}
{{- define "clusterdns.config" -}}
{{- $c := deepCopy .Values.config -}}
{{- $first := first .Values.listenAddresses -}}
{{- $listen := list -}}
{{- range .Values.listenAddresses -}}
{{- $listen = append $listen (include "clusterdns.hostPort" (list . $.Values.ports.dns)) -}}
{{- end -}}
{{- $_ := set $c "listen" $listen -}}
{{- $_ = set $c "metrics_listen" (include "clusterdns.hostPort" (list $first .Values.ports.metrics)) -}}
{{- $_ = set $c "health_listen" (include "clusterdns.hostPort" (list $first .Values.ports.health)) -}}
{{- $_ = set $c "ready_listen" (include "clusterdns.hostPort" (list $first .Values.ports.ready)) -}}
{{- $_ = set $c "lameduck" (printf "%ds" (int .Values.lameduck)) -}}
{{- $kube := deepCopy (default (dict) .Values.config.kubernetes) -}}
{{- $_ = set $kube "enabled" true -}}
{{- $_ = set $c "kubernetes" $kube -}}
# clusterdns config written by the Helm chart from the values `config`, `ports` and
# `listenAddresses` (change those, not this file). Reference: README "Configuration reference".
{{ include "clusterdns.toml" $c }}
{{ end -}}

{{/*
The node-local server's config, as TOML: no cluster source (its zone is a reserved name that is
never asked, RFC 6761 `.invalid`), the cluster zone and the reverse zones forwarded to the
central pods through the upstream Service, the central config's stub domains kept, everything
else to the central config's upstreams (by default the node's resolv.conf), all of it cached.
*/}}
{{- define "clusterdns.nodeLocalConfig" -}}
{{- $nl := .Values.nodeLocal -}}
{{- $c := dict -}}
{{- $_ := set $c "zone" "node-local.clusterdns.invalid" -}}
{{- $listen := list (include "clusterdns.hostPort" (list $nl.localIP 53)) -}}
{{- if $nl.listenOnServiceIP -}}
{{- $listen = append $listen (include "clusterdns.hostPort" (list .Values.service.clusterIP 53)) -}}
{{- end -}}
{{- $_ = set $c "listen" $listen -}}
{{- $_ = set $c "metrics_listen" (printf "0.0.0.0:%d" (int $nl.ports.metrics)) -}}
{{- $_ = set $c "health_listen" (include "clusterdns.hostPort" (list $nl.localIP $nl.ports.health)) -}}
{{- $_ = set $c "ready_listen" (include "clusterdns.hostPort" (list $nl.localIP $nl.ports.ready)) -}}
{{- $_ = set $c "lameduck" "0s" -}}
{{- $_ = set $c "upstreams" (default (list) .Values.config.upstreams) -}}
{{- $_ = set $c "resolv_conf" (default "/etc/resolv.conf" .Values.config.resolv_conf) -}}
{{- $central := include "clusterdns.hostPort" (list $nl.upstreamService.clusterIP 53) -}}
{{- $stubs := deepCopy (default (dict) (default (dict) .Values.config.upstream).stub_domains) -}}
{{- range $zone := list (default "cluster.local" $.Values.config.zone) "in-addr.arpa" "ip6.arpa" -}}
{{- $_ := set $stubs $zone (list $central) -}}
{{- end -}}
{{- $upstream := deepCopy (default (dict) $nl.config.upstream) -}}
{{- $_ = set $upstream "stub_domains" (merge (default (dict) $upstream.stub_domains) $stubs) -}}
{{- /* Cluster names go to the central Service over TCP: no conntrack entry per query, the
       reason NodeLocal DNSCache exists. */ -}}
{{- if not (hasKey $upstream "force_tcp") -}}
{{- $_ = set $upstream "force_tcp" true -}}
{{- end -}}
{{- $_ = set $c "upstream" $upstream -}}
{{- range $table := list "cache" "server" "log" -}}
{{- $_ := set $c $table (deepCopy (default (dict) (get $nl.config $table))) -}}
{{- end -}}
{{- range $k, $v := omit $nl.config "cache" "server" "upstream" "log" -}}
{{- $_ := set $c $k $v -}}
{{- end -}}
# clusterdns node-local config written by the Helm chart from `nodeLocal` and the central
# `config` (change those, not this file).
{{ include "clusterdns.toml" $c }}
{{ end -}}

{{/* Grace period: the server's lameduck, then 15 s to drain (upstream deadline) and exit. */}}
{{- define "clusterdns.terminationGracePeriod" -}}
{{- $lameduck := int .Values.lameduck -}}
{{- $min := add $lameduck 5 -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $lameduck 15 -}}
{{- else -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- if lt $grace $min -}}
{{- fail (printf "terminationGracePeriodSeconds %d is too short for lameduck %d: it must be at least %d (lameduck + 5 s to drain), or leave it empty for %d" $grace $lameduck $min (add $lameduck 15)) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}
{{- end -}}

{{/* Checks that span several values; each stops the render with what to change. */}}
{{- define "clusterdns.validate" -}}
{{- if .Values.nodeLocal.enabled -}}
{{- if not .Values.nodeLocal.upstreamService.clusterIP -}}
{{- fail "nodeLocal.enabled needs nodeLocal.upstreamService.clusterIP: a free address in the service CIDR (e.g. 10.96.0.11) for the Service the node-local servers forward cluster names to" -}}
{{- end -}}
{{- if and .Values.nodeLocal.listenOnServiceIP (not .Values.service.clusterIP) -}}
{{- fail "nodeLocal.listenOnServiceIP needs service.clusterIP (the DNS VIP, e.g. 10.96.0.10), or set nodeLocal.listenOnServiceIP=false and point kubelet --cluster-dns at nodeLocal.localIP" -}}
{{- end -}}
{{- if eq .Values.nodeLocal.upstreamService.clusterIP .Values.service.clusterIP -}}
{{- fail "nodeLocal.upstreamService.clusterIP must differ from service.clusterIP: the node-local servers answer on the DNS VIP themselves" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%d) is larger than autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (not (and .Values.service.create .Values.service.metricsPort)) -}}
{{- fail "serviceMonitor.enabled scrapes the Service's metrics port: it needs service.create and service.metricsPort" -}}
{{- end -}}
{{- $ports := list .Values.ports.dns .Values.ports.metrics .Values.ports.health .Values.ports.ready -}}
{{- if ne (len (uniq $ports)) 4 -}}
{{- fail (printf "ports must be four different numbers, got dns %v, metrics %v, health %v, ready %v" .Values.ports.dns .Values.ports.metrics .Values.ports.health .Values.ports.ready) -}}
{{- end -}}
{{- end -}}
