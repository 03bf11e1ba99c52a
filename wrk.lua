counter = 0
request = function()
  counter = counter + 1
  local body = '{"model":"bench","messages":[{"role":"user","content":"p ' .. counter .. math.random() .. '"}],"max_tokens":16,"stream":true}'
  return wrk.format("POST", "/v1/chat/completions", {["Content-Type"]="application/json"}, body)
end
