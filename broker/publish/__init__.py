"""The publish path after validation: from an accepted envelope to its deliveries on disk.

gate (urgent first at the door, the bulk ceiling), plan (what an envelope was meant to reach, recorded with its
first delivery, pure), committer (group commit of many callers' writes into few store writes),
completion (an envelope found stored: its first answer, and the writing of what its plan names
and the store lacks), publisher (check, route, redact, plan, commit, answer).
"""
