"""cloud: the BentoML service, serverless deployment, and publishing to update channels."""
