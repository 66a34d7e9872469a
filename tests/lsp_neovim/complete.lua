-- Headless Neovim (0.7+): start `localspec lsp` with the built-in client, ask for completions at a
-- position, apply the first item's text edit with Neovim's own code, and write what happened as JSON.
local out = os.getenv("LSP_TEST_OUT")
local file = os.getenv("LSP_TEST_FILE")
local position = { line = tonumber(os.getenv("LSP_TEST_LINE")), character = tonumber(os.getenv("LSP_TEST_CHARACTER")) }
local report = {}

local function first_result(responses, client_id)
  local response = responses and responses[client_id]
  if not response then
    return nil
  end
  if response.err then
    error("request failed: " .. vim.inspect(response.err))
  end
  return response.result
end

local ok, err = pcall(function()
  vim.cmd("edit " .. vim.fn.fnameescape(file))
  local bufnr = vim.api.nvim_get_current_buf()
  local ready = false
  local client_id = vim.lsp.start_client({
    name = "localspec",
    cmd = { os.getenv("LSP_TEST_PYTHON"), "-m", "localspec", "lsp" },
    root_dir = vim.fn.fnamemodify(file, ":p:h"),
    init_options = { debounceMs = 0, maxTokens = 16, precompute = false },
    on_init = function()
      ready = true
    end,
  })
  assert(client_id, "vim.lsp.start_client failed")
  vim.lsp.buf_attach_client(bufnr, client_id)
  assert(vim.wait(30000, function() return ready end, 20), "the language server did not initialize")

  local params = { textDocument = { uri = vim.uri_from_bufnr(bufnr) }, position = position }
  report.completion = first_result(vim.lsp.buf_request_sync(bufnr, "textDocument/completion", params, 30000), client_id)
  params.context = { triggerKind = 1 }
  report.inline = first_result(vim.lsp.buf_request_sync(bufnr, "textDocument/inlineCompletion", params, 30000), client_id)

  local items = report.completion and report.completion.items or {}
  if items[1] then
    vim.lsp.util.apply_text_edits({ items[1].textEdit }, bufnr, "utf-16")
  end
  report.buffer = vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)
  vim.lsp.stop_client(client_id)
end)

if not ok then
  report.error = tostring(err)
end
local handle = assert(io.open(out, "w"))
handle:write(vim.json.encode(report))
handle:close()
vim.cmd("qa!")
