{{/*
The HAProxy configuration, one template for both discovery modes:
  dns    (Kubernetes) nodes are the A records of the headless Service; a session's node is resolved as
         <node>.<headless service>, which exists only for that Service's endpoints (no open relay);
  static (several hosts, the local multi-instance test) nodes are listed in proxy.discovery.nodes.
Rendered into the proxy's ConfigMap, and by scripts/render_deploy.py for hosts without Kubernetes.
*/}}
{{- define "execbox.haproxy.unavailable" -}}
'{"error":{"code":"session_not_found","message":"session %[var(txn.session)] lives on node %[var(txn.node)], which the proxy cannot reach (stopped, restarted or removed): its kernel state is lost; create a new session","reason":"node_unavailable"}}'
{{- end -}}

{{- define "execbox.haproxy.cfg" -}}
{{- $p := .Values.proxy -}}
{{- $d := $p.discovery -}}
{{- $t := $p.timeouts -}}
{{- $h := $p.healthCheck -}}
{{- if not (has $d.mode (list "dns" "static")) -}}
{{- fail "proxy.discovery.mode must be dns or static" -}}
{{- end -}}
{{- if and (eq $d.mode "static") (not $d.nodes) -}}
{{- fail "proxy.discovery.mode static needs proxy.discovery.nodes: [{name, host, port}]" -}}
{{- end -}}
{{- $check := printf "check inter %s fall %d rise %d" $h.interval (int $h.fall) (int $h.rise) -}}
# HAProxy configuration for execbox (discovery: {{ $d.mode }}), rendered by the execbox Helm chart.
# Session-bound requests (/v1/sessions/<id>/...) go to the node named in the id, with no call to
# execbox; everything else goes to the least-loaded node whose /readyz answers 200.
global
    log stdout format raw local0 info
    maxconn {{ $p.maxconn }}
{{- if eq $d.mode "dns" }}

resolvers cluster
{{- if $d.nameserver }}
    nameserver dns {{ $d.nameserver }}
{{- else }}
    parse-resolv-conf
{{- end }}
    accepted_payload_size 8192
    resolve_retries 2
    timeout resolve 1s
    timeout retry 300ms
    # Short holds: a removed pod stops being routable within seconds.
    hold valid 2s
    hold nx 1s
    hold other 1s
    hold refused 1s
    hold timeout 1s
    hold obsolete 5s
{{- end }}

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect {{ $t.connect }}
    timeout client {{ $t.client }}
    timeout server {{ $t.server }}
    timeout http-request {{ $t.httpRequest }}
    timeout http-keep-alive 60s
    timeout tunnel {{ $t.tunnel }}
    timeout queue 5s
    timeout check 2s
    # Only a failed connection is retried: the request was never sent, so no code runs twice.
    retry-on conn-failure
    retries 1
    option redispatch 1

# The proxy's own liveness, readiness (some node is ready) and Prometheus metrics.
frontend proxy_health
    bind {{ $p.bind }}:{{ $p.statsPort }}
    http-request return status 200 content-type text/plain string "ok" if { path /healthz }
    http-request return status 200 content-type text/plain string "ready" if { path /readyz } { nbsrv(nodes) gt 0 }
    http-request return status 503 content-type text/plain string "no execbox node is ready" if { path /readyz }
    http-request use-service prometheus-exporter if { path /metrics }
    http-request return status 404 content-type text/plain string "not found"

frontend execbox
    bind {{ $p.bind }}:{{ $p.service.port }}
    option forwardfor
    # An id written with percent-escapes does not match and goes to some node, which answers
    # 404 wrong_node: never another node's session (HAProxy 2.6's normalize-uri is experimental).
    acl session_route path_reg ^/v1/sessions/s_[0-9a-f]{24}\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(/|$)
    http-request set-var(txn.session) path,field(4,/) if session_route
    http-request set-var(txn.node) var(txn.session),field(2,.) if session_route
{{- if eq $d.mode "static" }}
    acl known_node var(txn.node) -m str{{ range $d.nodes }} {{ .name }}{{ end }}
    # A node the proxy does not know is a node it cannot reach: the same answer as a dead one.
    http-request return status 404 content-type application/json lf-string {{ include "execbox.haproxy.unavailable" . }} if session_route !known_node
    use_backend node_%[var(txn.node)] if session_route
{{- else }}
    http-request do-resolve(txn.node_addr,cluster,ipv4) var(txn.node),concat(,,.{{ include "execbox.nodesFqdn" . }}) if session_route
    use_backend session_node if session_route
{{- end }}
    # Everything else: new sessions, one-shot executions, batches, /run_code, the Kernel Gateway.
    default_backend nodes

backend nodes
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    # Kernel Gateway kernel ids are UUIDs with no node in them: learn each kernel's server from the
    # X-Execbox-Kernel header of POST /api/kernels and send /api/kernels/<id>/... there.
    stick-table type string len 64 size 100k expire {{ $p.gatewayStickExpire }}
    stick store-response res.hdr(x-execbox-kernel)
    stick match path,field(4,/) if { path_beg /api/kernels/ }
{{- if eq $d.mode "static" }}
{{- range $d.nodes }}
    server {{ .name }} {{ .host }}:{{ .port | default $.Values.port }} {{ $check }}
{{- end }}
{{- else }}
    server-template node 1-{{ $d.maxNodes }} {{ include "execbox.nodesFqdn" . }}:{{ .Values.port }} {{ $check }} resolvers cluster resolve-prefer ipv4 init-addr none
{{- end }}
{{- if eq $d.mode "static" }}
{{- range $d.nodes }}

# The sessions of node {{ .name }}. Health from /healthz (alive), not /readyz: a node that is warming or
# draining still serves the sessions it holds.
backend node_{{ .name }}
    retries 0
    option httpchk GET /healthz
    http-check expect status 200
    http-request return status 404 content-type application/json lf-string {{ include "execbox.haproxy.unavailable" $ }} if { nbsrv lt 1 }
    http-error status 503 content-type application/json lf-string {{ include "execbox.haproxy.unavailable" $ }}
    # The proxy's own 503 (no connection) becomes the agreed 404; execbox's 503s carry X-Execbox-Node.
    http-after-response set-status 404 if { status 503 } !{ res.hdr(x-execbox-node) -m found }
    server {{ .name }} {{ .host }}:{{ .port | default $.Values.port }} {{ $check }}
{{- end }}
{{- else }}

# The sessions of the node resolved in the frontend; not resolvable = not an endpoint of the Service.
backend session_node
    retries 0
    http-request return status 404 content-type application/json lf-string {{ include "execbox.haproxy.unavailable" . }} unless { var(txn.node_addr) -m found }
    http-request set-dst var(txn.node_addr)
    http-request set-dst-port int({{ .Values.port }})
    http-error status 503 content-type application/json lf-string {{ include "execbox.haproxy.unavailable" . }}
    http-after-response set-status 404 if { status 503 } !{ res.hdr(x-execbox-node) -m found }
    server node 0.0.0.0:0
{{- end }}
{{- if .Values.sandboxfusion.enabled }}

# SandboxFusion's keyless /run_code listener (verl sends no key): least-loaded, health from the main port.
frontend sandboxfusion
    bind {{ $p.bind }}:{{ .Values.sandboxfusion.port }}
    default_backend nodes_sandboxfusion

backend nodes_sandboxfusion
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
{{- if eq $d.mode "static" }}
{{- range $d.nodes }}
    server {{ .name }} {{ .host }}:{{ $.Values.sandboxfusion.port }} {{ $check }} port {{ .port | default $.Values.port }}
{{- end }}
{{- else }}
    server-template node 1-{{ $d.maxNodes }} {{ include "execbox.nodesFqdn" . }}:{{ .Values.sandboxfusion.port }} {{ $check }} port {{ .Values.port }} resolvers cluster resolve-prefer ipv4 init-addr none
{{- end }}
{{- end }}
{{- end -}}
