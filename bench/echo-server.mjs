// The benchmarks' server side, one connection at a time: "T<bytes>\n" makes
// it send that many bytes (throughput); "E\n" makes it echo every byte after
// it (round trip). Used by bench/shared-ports.mjs (a host service) and
// bench/listen.mjs (a server in a sandbox, on a listener handed in).
const block = Buffer.alloc(1 << 20, 7)

/** A `connection` handler for net.createServer. */
export function serveBenchConnection(socket) {
  socket.setNoDelay(true)
  let head = ''
  const onData = (chunk) => {
    head += chunk.toString('latin1')
    const nl = head.indexOf('\n')
    if (nl < 0) return
    socket.off('data', onData)
    const rest = head.slice(nl + 1)
    if (head[0] === 'T') {
      let left = Math.min(Number(head.slice(1, nl)), 1 << 30)
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, block.length)
          left -= n
          if (!socket.write(n === block.length ? block : block.subarray(0, n))) return void socket.once('drain', pump)
        }
      }
      pump()
    } else {
      socket.on('data', (d) => socket.write(d))
      if (rest) socket.write(rest)
    }
  }
  socket.on('data', onData)
  socket.on('error', () => {})
}
