from execbox_server import serve

serve()
