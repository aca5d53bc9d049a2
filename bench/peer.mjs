// A TCP (or UDP) end for bench/uplink.mjs, run on the host, inside a sandbox or inside
// the fake upstream namespace. It takes one JSON command per line on stdin and
// answers each with one JSON line on stdout, in order:
//
//   {"op":"listen","host":"0.0.0.0","port":0}                   -> {"port":N}
//   {"op":"throughput","host":H,"port":P,"maxBytes":B,"maxMs":T} -> {"bytes":N,"ms":M}
//   {"op":"rtt","host":H,"port":P,"count":C,"maxMs":T}           -> {"samples":[µs,...]}
//   {"op":"listenUdp","host":H,"port":0}                         -> {"port":N}  (a UDP echo server)
//   {"op":"udpRtt","host":H,"port":P,"count":C,"maxMs":T}        -> {"samples":[µs,...]}  (one-byte datagrams)
//
// A server answers each connection by its first byte: 'T' = count everything
// until the client's FIN, then reply with the count; 'P' = echo every byte
// back. Every client loop stops at its count or byte limit or its time limit,
// whichever comes first. Clients connect only to loopback, the bench's fake
// upstream (198.51.100.248/30) and the uplink pool given as argv[2]: the bench
// never sends traffic anywhere else, and this makes sure of it.
//
// The peer exits when stdin ends (the bench exited or was killed), and in any
// case after 10 minutes.
import { createSocket } from 'node:dgram'
import { connect, createServer } from 'node:net'
import { createInterface } from 'node:readline'

const CHUNK = Buffer.alloc(1 << 20, 0x61) // 1 MiB of 'a', written again and again
const lifetime = setTimeout(() => process.exit(3), 600_000)
lifetime.unref()

// ---------------------------------------------------------------- where clients may connect

function toNumber(ip) {
  const parts = ip.split('.').map(Number)
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) return undefined
  return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0
}
function cidr(text) {
  const [ip, prefix] = text.split('/')
  const base = toNumber(ip)
  const bits = Number(prefix)
  if (base === undefined || !Number.isInteger(bits) || bits < 8 || bits > 32) throw new Error(`bad block ${text}`)
  const mask = bits === 32 ? 0xffffffff : (0xffffffff << (32 - bits)) >>> 0
  return { base: (base & mask) >>> 0, mask }
}
const allowed = ['127.0.0.0/8', '198.51.100.248/30', ...(process.argv[2] ? [process.argv[2]] : [])].map(cidr)
function checkTarget(host) {
  const n = toNumber(host)
  if (n === undefined || !allowed.some((b) => ((n & b.mask) >>> 0) === b.base)) throw new Error(`refusing to connect to ${host}: not loopback, the fake upstream or the pool`)
}

// ---------------------------------------------------------------- server

function listen(host, port) {
  const server = createServer((socket) => {
    socket.setNoDelay(true)
    let mode
    let count = 0
    socket.on('data', (data) => {
      if (mode === undefined) {
        mode = String.fromCharCode(data[0])
        data = data.subarray(1)
      }
      if (mode === 'T') count += data.length
      else if (mode === 'P' && data.length) socket.write(data)
    })
    socket.on('end', () => socket.end(mode === 'T' ? `${count}\n` : undefined))
    socket.on('error', () => {})
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => resolve({ port: server.address().port }))
  })
}

// ---------------------------------------------------------------- clients

/** Connects, failing after `ms` (a path that drops packets would otherwise hang for minutes). */
function open(host, port, ms, options = {}) {
  checkTarget(host)
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, ...options })
    const timer = setTimeout(() => socket.destroy(new Error(`connect to ${host}:${port} timed out`)), ms)
    socket.once('connect', () => {
      clearTimeout(timer)
      resolve(socket)
    })
    socket.once('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
  })
}

/** One connection, written to as fast as it takes it; done when the server has counted every byte. */
async function throughput({ host, port, maxBytes, maxMs }) {
  // Two chunks may be queued, so the kernel always has the next one when a write completes.
  const socket = await open(host, port, 3000, { writableHighWaterMark: 2 * CHUNK.length })
  return new Promise((resolve, reject) => {
    let sent = 0
    let reply = ''
    const started = performance.now()
    // Hard stop: the writing stops at maxMs; this catches a server that never answers.
    const guard = setTimeout(() => socket.destroy(new Error('no count from the server in time')), maxMs + 10_000)
    socket.on('data', (d) => (reply += d))
    socket.on('end', () => {
      clearTimeout(guard)
      const ms = performance.now() - started
      const bytes = Number(reply.trim())
      if (bytes !== sent) reject(new Error(`server counted ${reply.trim()} bytes, ${sent} sent`))
      else resolve({ bytes, ms })
    })
    socket.on('error', (error) => {
      clearTimeout(guard)
      reject(error)
    })
    socket.write('T')
    const pump = () => {
      while (sent < maxBytes && performance.now() - started < maxMs) {
        sent += CHUNK.length
        if (!socket.write(CHUNK)) return void socket.once('drain', pump)
      }
      socket.end()
    }
    pump()
  })
}

/** One-byte ping-pongs on one connection (Nagle off), each timed on its own. */
async function rtt({ host, port, count, maxMs }) {
  const socket = await open(host, port, 3000)
  socket.setNoDelay(true)
  return new Promise((resolve, reject) => {
    const samples = []
    const started = performance.now()
    let sentAt = 0
    const guard = setTimeout(() => socket.destroy(new Error('ping-pong timed out')), maxMs + 5000)
    const ping = () => {
      if (samples.length >= count || performance.now() - started >= maxMs) {
        clearTimeout(guard)
        socket.destroy()
        return resolve({ samples })
      }
      sentAt = performance.now()
      socket.write('x')
    }
    socket.on('data', () => {
      samples.push((performance.now() - sentAt) * 1000)
      ping()
    })
    socket.on('error', (error) => {
      clearTimeout(guard)
      reject(error)
    })
    socket.write('P')
    ping()
  })
}

// ---------------------------------------------------------------- UDP

/** A UDP echo server: every datagram goes back to its sender. */
function listenUdp({ host, port }) {
  const server = createSocket('udp4')
  server.on('message', (message, from) => server.send(message, from.port, from.address))
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.bind(port, host, () => resolve({ port: server.address().port }))
  })
}

/** One-byte datagram ping-pongs from one socket, each timed on its own; one left unanswered for 1 s ends the run with an error. */
function udpRtt({ host, port, count, maxMs }) {
  checkTarget(host)
  const socket = createSocket('udp4')
  return new Promise((resolve, reject) => {
    const samples = []
    const started = performance.now()
    let sentAt = 0
    let timer
    const done = (error) => {
      clearTimeout(timer)
      socket.close()
      if (error) reject(error)
      else resolve({ samples })
    }
    const ping = () => {
      if (samples.length >= count || performance.now() - started >= maxMs) return done()
      sentAt = performance.now()
      timer = setTimeout(() => done(new Error(`no answer from ${host}:${port} in 1 s (a datagram lost)`)), 1000)
      socket.send('x', port, host)
    }
    socket.on('message', () => {
      clearTimeout(timer)
      samples.push((performance.now() - sentAt) * 1000)
      ping()
    })
    socket.on('error', done)
    ping()
  })
}

// ---------------------------------------------------------------- command loop

const handlers = { listen: ({ host, port }) => listen(host, port), throughput, rtt, listenUdp, udpRtt }
let queue = Promise.resolve()
createInterface({ input: process.stdin }).on('line', (line) => {
  // One command at a time, so replies come back in order and measurements never overlap.
  queue = queue.then(async () => {
    let reply
    try {
      const request = JSON.parse(line)
      const handler = handlers[request.op]
      if (!handler) throw new Error(`unknown op ${request.op}`)
      reply = await handler(request)
    } catch (error) {
      reply = { error: error.message }
    }
    process.stdout.write(`${JSON.stringify(reply)}\n`)
  })
})
process.stdin.on('end', () => process.exit(0))
process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid })}\n`)
