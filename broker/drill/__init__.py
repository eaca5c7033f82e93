"""Drills: scenario files run by simulated rooms against a hub, expectations checked, a report written.

scenario (the file, pure), expect (the verdict, pure), run (the rooms and the steps, I/O),
report (what people read), load (the load mode), demo (the demo's rooms), command (`opsroom
simulate`). Never imported by the serving hub.
"""
