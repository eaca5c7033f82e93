"""The edge: where a call enters the hub.

servicer (HubService over gRPC: Publish, PublishStream, Connect, GetReceipt; errors become
statuses here, once), identity (the agency named by the client certificate), admission (the
bounds on work in flight, refusals with a retry delay). The only package that imports grpc.
"""
