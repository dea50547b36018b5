// @kube/client: talk to a KUBE's ECHO with automerge-repo. See README.md and
// echo/PROTOCOL.md (the wire contract) and halo/CREDENTIALS.md (credentials, invitations).

export { Identity, didToPublicKey, publicKeyToDid, verify } from './src/identity.js';
export {
  ROLES,
  issueCredential,
  signedBytes,
  verifyCredential,
  credentialToJson,
  spaceGenesis,
  spaceMember,
  authorizedDevice,
  revocation,
  MAX_TIME,
} from './src/credential.js';
export {
  createSpace,
  addMember,
  revoke,
  addCredential,
  credentials,
  objects,
  createObject,
  spaceOf,
  asString,
} from './src/space.js';
export {
  KubeAdapter,
  connectKube,
  synced,
  makeEchoToken,
  verifyEchoToken,
  echoTokenMessage,
  ECHO_PATH,
  IDENTITY_PATH,
} from './src/connect.js';
export {
  Host,
  Guest,
  InvitationError,
  createInvitation,
  invitationSwarm,
  isDocumentId,
  newCode,
  transcript,
  codeMac,
  CODE_ATTEMPTS,
  MAX_PENDING,
  PENDING_SECS,
} from './src/invitation.js';
export { validateSpace, members, SKEW_SECS } from './src/members.js';
export { SpaceAccess } from './src/access.js';
export { b64url } from './src/encoding.js';
export {
  SignalClient,
  SignalCluster,
  connectSignal,
  connectSignals,
  serveInvitation,
  redeemInvitation,
  SIGNAL_PATH,
} from './src/signal.js';
export { WebRTCAdapter, spaceSwarm } from './src/webrtc.js';
export {
  frames, frameCount, Reassembler, FramingError, encodeMessage, decodeMessage, LAST, MORE, KIND_AUTH, KIND_AUTOMERGE,
} from './src/chunk.js';
export {
  AuthError, AwaitingProof, Authenticated, startAuth, makeProof, verifyProof, sdpFingerprint, proofMessage,
  encodeAuth, decodeAuth, P2P_CONTEXT,
} from './src/peer-auth.js';
