/**
 * The S3 endpoint of the tests (README "Tests"): the cluster `.ci/run`
 * started (COWVOL_TEST_S3=1 and the AWS_* variables), or one started here
 * with test/ceph/start.sh for this test file and stopped when it ends.
 * Under CI=true a missing cluster fails the test; elsewhere it skips with
 * a message.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface S3Env {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  stop: () => void;
}

const here = fileURLToPath(new URL('.', import.meta.url));

function fromEnv(env: Record<string, string | undefined>, stop: () => void): S3Env | undefined {
  const endpoint = env.AWS_ENDPOINT_URL;
  const accessKeyId = env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
  if (endpoint === undefined || accessKeyId === undefined || secretAccessKey === undefined) return undefined;
  return { endpoint, accessKeyId, secretAccessKey, region: env.AWS_REGION ?? 'us-east-1', stop };
}

/** The cluster's endpoint and credentials, or a string saying why there is none. */
export function requireCeph(): S3Env | string {
  if (process.env.COWVOL_TEST_S3 === '1') {
    const env = fromEnv(process.env, () => undefined);
    if (env !== undefined) return env;
  }
  const dir = mkdtempSync(join(tmpdir(), 'cowvol-ceph-'));
  const started = spawnSync('bash', [join(here, 'ceph', 'start.sh'), dir], { encoding: 'utf8', timeout: 300_000 });
  const stop = (): void => {
    spawnSync('bash', [join(here, 'ceph', 'stop.sh'), dir]);
  };
  if (started.status !== 0) {
    stop();
    const why = `no Ceph cluster: test/ceph/start.sh failed: ${started.stderr.slice(-2000)}`;
    if (process.env.CI === 'true') throw new Error(why);
    return why;
  }
  const vars: Record<string, string> = {};
  for (const line of readFileSync(join(dir, 'env'), 'utf8').split('\n')) {
    const m = /^export ([A-Z_0-9]+)=(.*)$/.exec(line);
    if (m !== null) vars[m[1] ?? ''] = m[2] ?? '';
  }
  const env = fromEnv(vars, stop);
  if (env === undefined) {
    stop();
    throw new Error(`test/ceph/start.sh wrote no credentials in ${dir}/env`);
  }
  return env;
}
