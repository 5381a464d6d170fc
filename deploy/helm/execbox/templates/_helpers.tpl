{{/* Names and labels shared by every object of the release. */}}
{{- define "execbox.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "execbox.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "execbox.nodeSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "execbox.proxySelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/* The headless Service the proxy discovers nodes through (DNS only). */}}
{{- define "execbox.nodesService" -}}
{{- printf "%s-nodes" (include "execbox.fullname" .) -}}
{{- end -}}

{{- define "execbox.nodesFqdn" -}}
{{- printf "%s.%s.svc.%s" (include "execbox.nodesService" .) .Release.Namespace .Values.proxy.discovery.clusterDomain -}}
{{- end -}}

{{- define "execbox.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- .Values.apiKeys.existingSecret -}}
{{- else if .Values.apiKeys.keys -}}
{{- printf "%s-api-keys" (include "execbox.fullname" .) -}}
{{- else -}}
{{- fail "execbox listens on the pod IP and needs API keys: set apiKeys.existingSecret (a Secret whose key `keys` holds comma-separated keys) or apiKeys.keys" -}}
{{- end -}}
{{- end -}}

{{/* The node name: the pod IP with dashes, the label CoreDNS gives the pod's record under the headless
     Service, so the proxy can resolve <node>.<headless service> and nothing else. */}}
{{- define "execbox.nodeNameScript" -}}
EXECBOX_NODE_NAME="$(printf '%s' "$POD_IP" | tr . -)" exec /opt/venv/bin/python -m execbox_server
{{- end -}}
