// Added to setupFiles only when namespaces are unsupported and the user chose
// onUnsupported: 'skip'. In netns files every test is skipped with the reason.
import { beforeEach } from 'vitest'

const reason = process.env.VITEST_NETNS_SKIP
if (reason) beforeEach((context) => context.skip(reason))
