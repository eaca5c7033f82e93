"""The store: what the hub keeps in JetStream and how it reads and writes it.

layout (subjects, stream and consumer names, headers, pure), model (the messages written and
read, batch answers, store errors, and the Store protocol the publish path asks for, pure),
receipts (the records and the receipt built from them, pure), jetstream (the transport, with
nats_api, reads and consumers: the only modules that import nats), memory (the store in memory,
with the semantics the publish path relies on, for unit tests).
"""
