// Every scenario the suite runs: id, what it measures, which implementations
// run it, whether its setup is shared by the repetitions, and its targets.
//
// Every figure is a throughput (MiB/s, ops/s, blocks/s: higher is better), so
// a ratio cowvol ÷ reference ≥ 1 means cowvol is as fast or faster.
//
// Target kinds:
//   ref    cowvol ÷ <impl> (same scenario, same metric) ≥ min
//   cross  cowvol ÷ cowvol of <scenario>/<metric> ≥ min
//   zero   the cowvol run's io field <field> (median) = 0
// and, for every scenario, cowvol's peak RSS ≤ RSS_LIMIT_MIB.

export const RSS_LIMIT_MIB = 256;
export const IMPLS = ['cowvol', 'raw', 'qcow2'];
const ALL = IMPLS;
const COW_QCOW = ['cowvol', 'qcow2'];

export const CATALOG = [
  {
    id: '1-seq',
    title: 'overwrite, no snapshot: sequential 1M writes',
    impls: ALL,
    shared: true,
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'write', ref: 'raw', min: 0.85 }],
  },
  {
    id: '1-rand',
    title: 'overwrite, no snapshot: random 4K writes x16',
    impls: ALL,
    shared: true,
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'write', ref: 'raw', min: 0.6 }],
  },
  {
    id: '2-seq',
    title: 'first write after snapshot (COW): sequential 1M',
    impls: ALL,
    metrics: { write: 'MiB/s' },
    targets: [
      { kind: 'ref', metric: 'write', ref: 'raw', min: 0.4 },
      { kind: 'ref', metric: 'write', ref: 'qcow2', min: 1.5 },
    ],
  },
  {
    id: '2-rand',
    title: 'first write after snapshot (COW): random 4K x16',
    impls: ALL,
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'write', ref: 'qcow2', min: 5 }],
  },
  {
    id: '3-stride-qd1',
    title: 'strided first writes: 4K every 64K after snapshot, x1',
    impls: ALL,
    metrics: { write: 'MiB/s' },
    targets: [],
  },
  {
    id: '3-stride-qd16',
    title: 'strided first writes: 4K every 64K after snapshot, x16',
    impls: ALL,
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'write', ref: 'qcow2', min: 5 }],
  },
  {
    id: '4-seq',
    title: 'overwrite of COWed blocks (2nd pass): sequential 1M',
    impls: ALL,
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'cross', metric: 'write', scenario: '1-seq', min: 0.85, label: '>=0.85x own 1-seq' }],
  },
  {
    id: '4-rand',
    title: 'overwrite of COWed blocks (2nd pass): random 4K x16',
    impls: ALL,
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'cross', metric: 'write', scenario: '1-rand', min: 0.85, label: '>=0.85x own 1-rand' }],
  },
  {
    id: '5-read-1',
    title: 'snapshot full sequential read (1M reads), 1 newer snapshot',
    impls: ALL,
    shared: true,
    metrics: { read: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'read', ref: 'raw', min: 0.8 }],
  },
  {
    id: '5-read-many',
    title: 'snapshot full sequential read (1M reads), N newer snapshots',
    impls: ALL,
    shared: true,
    metrics: { read: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'read', ref: 'raw', min: 0.6 }],
  },
  {
    id: '6-create-1g-1',
    title: 'snapshot create / delete (empty) latency: 1 GiB volume, 1 existing',
    impls: ['cowvol'],
    shared: true,
    metrics: { create: 'ops/s', delete: 'ops/s' },
    targets: [],
  },
  {
    id: '6-create-1g-many',
    title: 'snapshot create / delete (empty) latency: 1 GiB volume, many existing',
    impls: ['cowvol'],
    shared: true,
    metrics: { create: 'ops/s', delete: 'ops/s' },
    targets: [],
  },
  {
    id: '6-create-1t-1',
    title: 'snapshot create / delete (empty) latency: 1 TiB sparse, 1 existing',
    impls: ['cowvol'],
    shared: true,
    metrics: { create: 'ops/s', delete: 'ops/s' },
    targets: [],
  },
  {
    id: '6-create-1t-many',
    title: 'snapshot create / delete (empty) latency: 1 TiB sparse, many existing',
    impls: ['cowvol'],
    shared: true,
    metrics: { create: 'ops/s', delete: 'ops/s' },
    targets: [{ kind: 'cross', metric: 'create', scenario: '6-create-1g-1', min: 1 / 1.5, label: 'O(1): <=1.5x 1g-1 latency' }],
  },
  {
    id: '6-delete-mid',
    title: 'delete of a middle snapshot owning N blocks (hand-over)',
    impls: ['cowvol'],
    metrics: { delete: 'blocks/s' },
    targets: [{ kind: 'zero', metric: 'delete', field: 'dataBytesMoved', label: 'moves 0 data bytes' }],
  },
  {
    id: '7-open-small',
    title: 'clean open: many snapshots, 1 mapped block each',
    impls: ['cowvol'],
    shared: true,
    metrics: { open: 'ops/s' },
    targets: [],
  },
  {
    id: '7-open-mapped',
    title: 'clean open: many snapshots, many mapped blocks',
    impls: ['cowvol'],
    shared: true,
    metrics: { open: 'ops/s' },
    targets: [{ kind: 'cross', metric: 'open', scenario: '7-open-small', min: 1 / 1.5, label: 'indep. of mappings (<=1.5x)' }],
  },
  {
    id: '7-recover',
    title: 'open with un-checkpointed journal (process crash / power loss)',
    impls: ['cowvol'],
    metrics: { 'open-crash': 'ops/s', 'open-powerloss': 'ops/s' },
    targets: [],
  },
  {
    id: '8-cli-list',
    title: 'CLI round trip: snapshot list --json vs qemu-img snapshot -l',
    impls: COW_QCOW,
    shared: true,
    metrics: { list: 'ops/s' },
    targets: [],
  },
  {
    id: '8-cli-create',
    title: 'CLI round trip: snapshot create vs qemu-img snapshot -c',
    impls: COW_QCOW,
    shared: true,
    metrics: { create: 'ops/s' },
    targets: [],
  },
  {
    id: '8-cli-write',
    title: 'CLI end to end: cowvol write of a whole volume, no snapshot, vs dd conv=fdatasync (raw column)',
    impls: ['cowvol', 'raw'],
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'write', ref: 'raw', min: 1 / 1.5, label: 'wall <=1.5x dd' }],
  },
  {
    id: '8-cli-write-cow',
    title: 'CLI end to end: first cowvol write after a snapshot vs qemu-io write -s + flush after qemu-img snapshot -c',
    impls: COW_QCOW,
    metrics: { write: 'MiB/s' },
    targets: [{ kind: 'ref', metric: 'write', ref: 'qcow2', min: 1, label: 'wall <=1.0x qemu-io' }],
  },
];

export function targetLabel(t) {
  if (t.label) return t.label;
  if (t.kind === 'ref') return `>=${t.min}x ${t.ref}`;
  return t.kind;
}

/** Scenarios selected by --only: exact ids, or prefixes ("2", "6-create", "5-read"). */
export function selectScenarios(only) {
  if (!only) return CATALOG;
  const wanted = only
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const hit = CATALOG.filter((s) => wanted.some((w) => s.id === w || s.id.startsWith(w.endsWith('-') ? w : `${w}-`) || s.id.startsWith(w)));
  return hit;
}
