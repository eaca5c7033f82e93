"""The publish path after validation: from an accepted envelope to its deliveries on disk.

lanes (urgent or bulk, pure), plan (what an envelope was meant to reach, recorded with its
first delivery, pure), committer (group commit of many callers' writes into few store writes),
publisher (check, route, redact, plan, commit, answer; resends answered from the store).
"""
