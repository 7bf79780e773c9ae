#!/usr/bin/env node
// Summarizes a V8 CPU profile (.cpuprofile from `node --cpu-prof` or from
// `node bench/scenario.mjs … --cpu-prof-measure FILE`): self time and
// inclusive time per function, top N, paths relative to the repository.
//
//   node bench/profile-summary.mjs FILE.cpuprofile [--top 25]
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } });
const top = Number(values.top);
const profile = JSON.parse(readFileSync(positionals[0], 'utf8'));
const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

// Time per sample: timeDeltas[i] is the time before sample i.
const selfUs = new Map();
let totalUs = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const dt = profile.timeDeltas?.[i] ?? 0;
  totalUs += dt;
  selfUs.set(profile.samples[i], (selfUs.get(profile.samples[i]) ?? 0) + dt);
}

const label = (n) => {
  const f = n.callFrame;
  const url = (f.url || '')
    .replace(/^file:\/\//, '')
    .replace(/^.*?\/(packages|bench|node_modules)\//, '$1/')
    .replace(/^node:/, 'node:');
  return `${f.functionName || '(anonymous)'} ${url ? `${url}:${f.lineNumber + 1}` : ''}`.trim();
};

const selfBy = new Map();
const inclBy = new Map();
for (const [id, us] of selfUs) {
  const n = nodes.get(id);
  const key = label(n);
  selfBy.set(key, (selfBy.get(key) ?? 0) + us);
  // Inclusive: credit every distinct function on the stack once.
  const seen = new Set();
  for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
    const k = label(nodes.get(cur));
    if (seen.has(k)) continue;
    seen.add(k);
    inclBy.set(k, (inclBy.get(k) ?? 0) + us);
  }
}

const pct = (us) => `${((100 * us) / totalUs).toFixed(1).padStart(5)}%`;
const ms = (us) => `${(us / 1000).toFixed(1).padStart(9)} ms`;
console.log(`profile: ${positionals[0]}  (${(totalUs / 1000).toFixed(1)} ms sampled, ${profile.samples.length} samples)`);
console.log('\nSELF time');
for (const [k, us] of [...selfBy].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(us)} ${pct(us)}  ${k}`);
console.log('\nINCLUSIVE time');
for (const [k, us] of [...inclBy].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(us)} ${pct(us)}  ${k}`);
