-- wrk script for the load benchmark.
--  * WRK_CONNECT_TO=IP:PORT connects there instead of resolving the URL's host, so the URL's host
--    (edition.cnn.com) stays the Host header and the TLS SNI, like curl --connect-to
--    (wrk resolves through wrk.resolve, which a script may replace).
--  * done() prints one line `WRK_JSON {...}` with the counts and latency percentiles (µs).
local connect_to = os.getenv("WRK_CONNECT_TO")
if connect_to and connect_to ~= "" then
   local ip, port = connect_to:match("^(.+):(%d+)$")
   function wrk.resolve(host, service)
      local addrs = wrk.lookup(ip, port)
      for i = #addrs, 1, -1 do
         if not wrk.connect(addrs[i]) then
            table.remove(addrs, i)
         end
      end
      wrk.addrs = addrs
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
      '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
      summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
