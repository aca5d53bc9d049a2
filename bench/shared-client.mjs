// Client of bench/shared-ports.mjs, run once as a plain process and once in a
// sandbox: connects to 127.0.0.1:PORT and prints one JSON line.
//   node bench/shared-client.mjs PORT throughput BYTES  -> {"mibPerS": n}
//   node bench/shared-client.mjs PORT rtt COUNT          -> {"rttUs": [..]} (one 1-byte echo per sample)
//   node bench/shared-client.mjs PORT connects COUNT     -> {"connectUs": [..]} (connect until 'connect', one after the other)
//   node bench/shared-client.mjs 0 connects COUNT        -> the same to a server of its own on 127.0.0.1 (the sandbox's, in one)
import { connect, createServer } from 'node:net'

const [portArg, mode, amount] = process.argv.slice(2)
let port = portArg
if (mode === 'connects' && port === '0') {
  const own = createServer((socket) => socket.destroy())
  await new Promise((resolve) => own.listen(0, '127.0.0.1', resolve))
  port = String(own.address().port)
}
if (mode === 'connects') {
  const samples = []
  for (let i = 0; i < Number(amount); i++) {
    const start = process.hrtime.bigint()
    const socket = connect({ port: Number(port), host: '127.0.0.1' })
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject))
    samples.push(Number(process.hrtime.bigint() - start) / 1000)
    socket.destroy()
  }
  console.log(JSON.stringify({ connectUs: samples }))
  process.exit(0)
}
const socket = connect({ port: Number(port), host: '127.0.0.1', noDelay: true })
socket.on('error', (error) => {
  console.error(String(error))
  process.exit(1)
})
socket.once('connect', () => {
  if (mode === 'throughput') {
    const total = Number(amount)
    let got = 0
    const start = process.hrtime.bigint()
    socket.write(`T${total}\n`)
    socket.on('data', (chunk) => {
      got += chunk.length
      if (got >= total) {
        const seconds = Number(process.hrtime.bigint() - start) / 1e9
        console.log(JSON.stringify({ mibPerS: total / 1048576 / seconds }))
        socket.destroy()
      }
    })
    return
  }
  socket.write('E\n')
  const count = Number(amount)
  const samples = []
  let sent = 0n
  const ping = () => {
    sent = process.hrtime.bigint()
    socket.write('x')
  }
  socket.on('data', () => {
    samples.push(Number(process.hrtime.bigint() - sent) / 1000)
    if (samples.length >= count) {
      console.log(JSON.stringify({ rttUs: samples }))
      socket.destroy()
      return
    }
    ping()
  })
  ping()
})
