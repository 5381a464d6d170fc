"""The Jupyter Kernel Gateway protocol over execbox sessions: wire models and the websocket."""

from execbox_server.gateway.channels import GatewayHub, KernelChannels, kernel_session_tag, restart_kernel
from execbox_server.gateway.models import V1_SUBPROTOCOL, WireProtocol

__all__ = ["V1_SUBPROTOCOL", "GatewayHub", "KernelChannels", "WireProtocol", "kernel_session_tag", "restart_kernel"]
