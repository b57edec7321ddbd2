"""The signed update channel, publisher side: a TUF repository in a folder or an S3 prefix.

``repo`` is the pure core (metadata in, metadata out), ``storage`` the only door to files
and S3, ``channel.Channel`` the shell that ties them to the publisher's keys, and ``cli``
the ``bentoedge channel`` / ``bentoedge publish`` verbs.
"""

from bentoedge.cloud.channel.channel import Channel

__all__ = ["Channel"]
