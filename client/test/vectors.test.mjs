// The shared membership vectors (halo/tests/vectors/space.json, written and checked by halo's
// tests/vectors.rs): validateSpace must find exactly what halo's space::validate finds.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { validateSpace } from '../src/members.js';

const FILE = new URL('../../halo/tests/vectors/space.json', import.meta.url);
const cases = JSON.parse(readFileSync(FILE, 'utf8'));

const byText = (a, b) => {
  const [x, y] = [JSON.stringify(a), JSON.stringify(b)];
  return x < y ? -1 : x > y ? 1 : 0;
};

/** What validateSpace finds, in the file's terms. */
function found(c, credentials) {
  const m = validateSpace(c.space, credentials, { now: c.now, skew: c.skew });
  const result = {
    roles: Object.fromEntries(m.roles),
    devices: Object.fromEntries(m.devices),
    rejected: m.rejected.map(([id, why]) => [id, why]).sort(byText),
  };
  return { m, result };
}

test('the vectors are there', () => {
  assert.ok(cases.length >= 40, `${cases.length} cases`);
});

for (const c of cases) {
  test(c.name, () => {
    const { m, result } = found(c, c.credentials);
    assert.deepEqual(result, { roles: c.roles, devices: c.devices, rejected: c.rejected });
    // roleOf resolves a device to its member's role, as halo's role_of.
    for (const [did, role] of Object.entries(c.roles)) assert.equal(m.roleOf(did), role);
    for (const [device, identity] of Object.entries(c.devices)) {
      assert.equal(m.roleOf(device), c.roles[device] ?? c.roles[identity]);
    }
    // The same set in other orders.
    const reversed = [...c.credentials].reverse();
    const half = Math.floor(c.credentials.length / 2);
    const rotated = [...c.credentials.slice(half), ...c.credentials.slice(0, half)];
    for (const order of [reversed, rotated]) assert.deepEqual(found(c, order).result, result);
  });
}
