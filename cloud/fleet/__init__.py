"""The fleet: signed device reports, their store, drift, fleet status and wave rollouts.

``report`` (the signed report format), ``drift`` (per-input statistics and PSI),
``rollout`` (the wave controller) and ``status`` (aggregation) are pure; ``store`` is the
only door to the fleet store (a folder or an S3 prefix, through ``cloud.channel.storage``)
and ``cli`` the ``bentoedge fleet`` / ``bentoedge rollout`` verbs.  Nothing is imported
here, so a device can import ``report`` and ``drift`` without the cloud's dependencies.
"""
