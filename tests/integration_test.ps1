#Requires -Version 7.0
<#
.SYNOPSIS
  Smoke test of a running Background Agent deployment (compose, Kubernetes or `bgagent dev`):
  health, enqueue, completion, /processed, stop and start. PowerShell twin of
  tests/integration_test.sh.

.EXAMPLE
  $env:BACKGROUND_AGENT_API_KEY = '...'
  $env:BGAGENT_URL = 'http://127.0.0.1:8080'
  pwsh tests/integration_test.ps1

.NOTES
  Workers must be running: the task is run by the built-in `echo` executor.
  Exits 1 when a step fails, 2 when the key is missing. The fleet is resumed (POST /start) even
  when a step between /stop and /start fails.
#>
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$BaseUrl = if ($env:BGAGENT_URL) { $env:BGAGENT_URL.TrimEnd('/') } else { 'http://127.0.0.1:8080' }
$ApiKey = $env:BACKGROUND_AGENT_API_KEY
$WaitSecs = if ($env:BGAGENT_TEST_WAIT_SECS) { [int]$env:BGAGENT_TEST_WAIT_SECS } else { 30 }

if (-not $ApiKey) {
    [Console]::Error.WriteLine('error: BACKGROUND_AGENT_API_KEY is not set (the API key of the deployment under test)')
    exit 2
}

$script:Passed = 0
$script:Failed = 0

function Pass([string]$Message) {
    $script:Passed++
    Write-Host "PASS $Message"
}

function Fail([string]$Message, $Response = $null) {
    $script:Failed++
    Write-Host "FAIL $Message"
    if ($null -ne $Response) {
        $body = if ($null -ne $Response.Body) { ($Response.Body | ConvertTo-Json -Depth 10 -Compress) } else { '' }
        if ($body.Length -gt 500) { $body = $body.Substring(0, 500) }
        Write-Host "     status $($Response.Status), body: $body"
    }
}

# Invoke-Api METHOD PATH [BODY] [-NoAuth]: returns @{ Status = <int>; Body = <parsed JSON or $null> }.
function Invoke-Api {
    param(
        [Parameter(Mandatory)][string]$Method,
        [Parameter(Mandatory)][string]$Path,
        $Body = $null,
        [switch]$NoAuth
    )
    $headers = @{ 'accept' = 'application/json' }
    if (-not $NoAuth) { $headers['x-api-key'] = $ApiKey }
    $params = @{
        Method             = $Method
        Uri                = "$BaseUrl$Path"
        Headers            = $headers
        TimeoutSec         = 10
        SkipHttpErrorCheck = $true
        StatusCodeVariable = 'statusCode'
    }
    if ($null -ne $Body) {
        $params['ContentType'] = 'application/json'
        $params['Body'] = ($Body | ConvertTo-Json -Depth 10 -Compress)
    }
    try {
        $result = Invoke-RestMethod @params
        return @{ Status = [int]$statusCode; Body = $result }
    }
    catch {
        return @{ Status = 0; Body = $null; Error = $_.Exception.Message }
    }
}

function Get-Field($Object, [string]$Name) {
    if ($null -eq $Object) { return $null }
    $prop = $Object.PSObject.Properties[$Name]
    if ($null -eq $prop) { return $null }
    return $prop.Value
}

$pausedByUs = $false
Write-Host "Background Agent smoke test against $BaseUrl"

try {
    # 1. Health.
    Write-Host '-- GET /health'
    $r = Invoke-Api -Method GET -Path '/health' -NoAuth
    $status = Get-Field $r.Body 'status'
    if ($r.Status -eq 200 -and $status) { Pass "GET /health -> 200, status=$status" }
    else { Fail 'GET /health must answer 200 with a JSON status field' $r }

    # 2. Authentication is enforced.
    Write-Host '-- GET /tasks without x-api-key'
    $r = Invoke-Api -Method GET -Path '/tasks' -NoAuth
    if ($r.Status -eq 401) { Pass 'GET /tasks without a key -> 401' }
    else { Fail 'GET /tasks without a key must answer 401' $r }

    # 3. Enqueue.
    Write-Host '-- POST /enqueue'
    $r = Invoke-Api -Method POST -Path '/enqueue' -Body @{ agent = 'echo'; command = 'hello'; meta = @{ n = 1 } }
    $taskId = Get-Field $r.Body 'id'
    if ($r.Status -eq 202 -and $taskId) { Pass "POST /enqueue -> 202, id=$taskId" }
    else { $taskId = $null; Fail 'POST /enqueue must answer 202 with an id' $r }

    if ($taskId) {
        # 4. Completion: the echo executor finishes the task.
        Write-Host "-- GET /tasks/$taskId until succeeded (up to ${WaitSecs}s)"
        $deadline = (Get-Date).AddSeconds($WaitSecs)
        $taskStatus = $null
        $task = $null
        while ((Get-Date) -lt $deadline) {
            $r = Invoke-Api -Method GET -Path "/tasks/$taskId"
            if ($r.Status -eq 200) {
                $task = $r.Body
                $taskStatus = Get-Field $task 'status'
                if ($taskStatus -in @('succeeded', 'failed', 'cancelled')) { break }
            }
            Start-Sleep -Milliseconds 500
        }
        if ($taskStatus -eq 'succeeded') {
            Pass "task $taskId succeeded"
            $resultJson = (Get-Field $task 'result') | ConvertTo-Json -Depth 10 -Compress
            if ($resultJson -and $resultJson.Contains('hello')) { Pass 'the echo result carries the command' }
            else { Fail 'the result of an echo task must carry its input ("hello")' }
        }
        else {
            Fail "task $taskId did not succeed within ${WaitSecs}s (last status: $taskStatus)"
        }

        # 5. The attempt shows up in /processed.
        Write-Host '-- GET /processed'
        $r = Invoke-Api -Method GET -Path '/processed'
        $processed = @(Get-Field $r.Body 'processed')
        $found = $processed | Where-Object { $null -ne $_ -and (Get-Field $_ 'task_id') -eq $taskId }
        if ($r.Status -eq 200 -and $found) { Pass "GET /processed lists task $taskId" }
        else { Fail "GET /processed must list task $taskId" $r }
    }
    else {
        Fail 'completion not checked: no task was enqueued'
        Fail '/processed not checked: no task was enqueued'
    }

    # 6. Stop and start the fleet.
    Write-Host '-- POST /stop'
    $pausedByUs = $true
    $r = Invoke-Api -Method POST -Path '/stop'
    if ($r.Status -eq 200 -and (Get-Field $r.Body 'paused') -eq $true) { Pass 'POST /stop -> paused=true' }
    else { Fail 'POST /stop must answer 200 with paused=true' $r }

    Write-Host '-- POST /start'
    $r = Invoke-Api -Method POST -Path '/start'
    if ($r.Status -eq 200 -and (Get-Field $r.Body 'paused') -eq $false) {
        $pausedByUs = $false
        Pass 'POST /start -> paused=false'
    }
    else { Fail 'POST /start must answer 200 with paused=false' $r }
}
finally {
    if ($pausedByUs) {
        # Never leave the fleet paused because a step between /stop and /start failed.
        Invoke-Api -Method POST -Path '/start' | Out-Null
    }
}

Write-Host "$($script:Passed) passed, $($script:Failed) failed"
if ($script:Failed -gt 0) { exit 1 }
exit 0
