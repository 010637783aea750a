"""S3 calls `cargo xtask bench upload` makes with the peers' own library (boto3, from the
benchmark's virtualenv, see bench.txt). Credentials and region come from the environment.

  bench_s3.py create-bucket ENDPOINT BUCKET
  bench_s3.py size-and-delete ENDPOINT BUCKET KEY      prints the object's size, then deletes it
  bench_s3.py upload ENDPOINT FILE BUCKET KEY          boto3 upload_file, default transfer manager
  bench_s3.py upload-crt ENDPOINT FILE BUCKET KEY      the CRT's S3 client, through s3transfer
                                                       (boto3's own CRT path takes no endpoint)
"""
import sys

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def client(endpoint):
    # Path-style addressing, as for any local S3 server.
    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))


def upload_crt(endpoint, path, bucket, key):
    # What the AWS CLI v2 does with `preferred_transfer_client = crt`: the CRT's own S3 client
    # moves the bytes, botocore only serializes the requests (with the endpoint and path style).
    from s3transfer.crt import (
        BotocoreCRTCredentialsWrapper,
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )

    session = botocore.session.Session()
    region = session.get_config_variable("region") or "us-east-1"
    credentials = BotocoreCRTCredentialsWrapper(session.get_credentials())
    crt = create_s3_crt_client(
        region=region,
        crt_credentials_provider=credentials.to_crt_credentials_provider(),
        use_ssl=endpoint.startswith("https://"),
    )
    serializer = BotocoreCRTRequestSerializer(
        session,
        {
            "region_name": region,
            "endpoint_url": endpoint,
            "config": Config(s3={"addressing_style": "path"}),
        },
    )
    with CRTTransferManager(crt, serializer) as manager:
        manager.upload(path, bucket, key).result()


def main(argv):
    command, endpoint, *rest = argv
    s3 = client(endpoint)
    if command == "create-bucket":
        (bucket,) = rest
        try:
            s3.create_bucket(Bucket=bucket)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    elif command == "size-and-delete":
        bucket, key = rest
        print(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        s3.delete_object(Bucket=bucket, Key=key)
    elif command == "upload":
        path, bucket, key = rest
        s3.upload_file(path, bucket, key, Config=TransferConfig())
    elif command == "upload-crt":
        path, bucket, key = rest
        upload_crt(endpoint, path, bucket, key)
    else:
        sys.exit(f"unknown command {command!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
