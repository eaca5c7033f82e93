"""The edge: where a call enters the hub.

servicer (HubService over gRPC: Publish, PublishStream, Connect, GetReceipt), requests (what
becomes of request bytes: malformed requests, ids, unexpected errors), bulk_line (a stream's bulk
envelopes in a line of their own), status (errors to google.rpc.Status, once), server (the gRPC
server and health), identity (the agency named by the client certificate), admission (the bounds
on work in flight, refusals with a retry delay). The only package that imports grpc.
"""
