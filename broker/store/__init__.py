"""The store: what the hub keeps in JetStream and how it reads and writes it.

layout (subjects, stream and consumer names, headers, pure), model (the messages written and
read, batch answers and store errors, pure), jetstream (the transport: the only module that
imports nats).
"""
