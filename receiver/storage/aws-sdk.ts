// The parts of the AWS SDK the S3 driver uses. The build makes this module a bundle of its own,
// dist/node_modules/barman-aws-sdk.cjs, which the receiver's bundle requires only when a catalog
// on S3 is opened: the SDK is half the receiver's code, and every other command (a recover, a
// backup request, serve with a catalog on disk) would otherwise read it at each start.

export {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
export { Upload } from '@aws-sdk/lib-storage';
