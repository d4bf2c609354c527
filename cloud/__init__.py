"""The cloud side of the tracker: AWS Lambda handlers that run behind AWS IoT Core rules.

Not part of the device: nothing on the board imports this package. The handlers import only the
pure codec modules (`tracker.link.codec`, `tracker.core.fix`, `tracker.core.errors`,
`tracker.core.limits`), the standard library and boto3 (which the Lambda runtime provides);
`scripts/lambda-bundle` packs exactly these.
"""
