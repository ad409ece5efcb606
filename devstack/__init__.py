"""How to run digitq on one machine: the `make run` launcher and the embedded Redis.

Not part of the service itself: in containers or on several machines each process is started
on its own (see docker-compose.yml).
"""
