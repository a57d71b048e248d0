--- `:checkhealth swiftguard`

local M = {}

function M.check()
  local health = vim.health
  local swiftguard = require('swiftguard')
  health.start('swiftguard')
  if vim.fn.has('nvim-0.11') == 1 then
    health.ok('Neovim ' .. tostring(vim.version()))
  else
    health.error('Neovim 0.11 or later is required')
  end
  health.info('inline UI: ' .. tostring(swiftguard.mode))
  local cmd = swiftguard.options.cmd
  if type(cmd) == 'table' and vim.fn.executable(cmd[1]) == 1 then
    health.ok('server command: ' .. table.concat(cmd, ' '))
  else
    health.error('server command is not executable: ' .. vim.inspect(cmd), {
      'pip install swiftguard (see the repository README)',
      "or pass cmd = { '/path/to/.venv/bin/swiftguard', 'serve' } to setup()",
    })
  end
  local client = swiftguard.get_client()
  if not client then
    health.info('no swiftguard client attached to the current buffer')
    return
  end
  local response = client:request_sync('workspace/executeCommand', { command = 'swiftguard.status', arguments = {} }, 2000)
  local status = response and response.result
  if not status then
    health.warn('swiftguard.status did not answer')
  elseif status.engine.state == 'ready' then
    health.ok(('model ready: %s on %s'):format(status.engine.model, status.engine.device))
  elseif status.engine.state == 'error' then
    health.error('model failed to load: ' .. tostring(status.engine.error))
  else
    health.info('model state: ' .. status.engine.state)
  end
end

return M
