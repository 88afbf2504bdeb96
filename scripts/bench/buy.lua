-- wrk script: POST /buy with a JSON body; FT (env) chooses ft=true or ft=false.
local ft = os.getenv("FT") or "true"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
request = function()
  counter = counter + 1
  local product = (counter % 11) + 1
  local body = string.format('{"product":"%d","user":"wrk-%d","ft":%s}', product, counter % 50, ft)
  return wrk.format(nil, "/buy", nil, body)
end
