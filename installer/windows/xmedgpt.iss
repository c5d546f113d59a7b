; Inno Setup script for XMedGPT Workstation on Windows.
; Packages the PyInstaller one-folder build made ON WINDOWS (see BUILD.md in this folder):
;   pyinstaller --noconfirm --distpath build\pyi-dist --workpath build\pyi-work installer\xmedgpt.spec
;   iscc installer\windows\xmedgpt.iss
; Per-user install (no administrator rights), Start-menu entry, optional desktop icon.
; Settings live in %APPDATA%\XMedGPT, drafts and the audit log in %LOCALAPPDATA%\XMedGPT:
; the uninstaller leaves them in place unless the user ticks "Also delete drafts and audit log".

#define AppName "XMedGPT Workstation"
#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define BuildDir "..\..\build\pyi-dist\xmedgpt"

[Setup]
AppId={{6F1C2E7A-4D6B-4C3E-9E55-8A1B2C3D4E5F}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=XMedGPT Workstation team
DefaultDirName={localappdata}\Programs\XMedGPT
DefaultGroupName={#AppName}
PrivilegesRequired=lowest
OutputDir=..\..\build\installer
OutputBaseFilename=xmedgpt-{#AppVersion}-windows-x64-setup
Compression=lzma2/ultra64
SolidCompression=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
SetupIconFile=xmedgpt.ico
UninstallDisplayIcon={app}\xmedgpt.exe
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "Create a desktop icon"; GroupDescription: "Shortcuts:"

[Files]
Source: "{#BuildDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\xmedgpt.exe"; Parameters: "view"
Name: "{group}\XMedGPT doctor (environment check)"; Filename: "{cmd}"; Parameters: "/k ""{app}\xmedgpt.exe"" doctor"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\xmedgpt.exe"; Parameters: "view"; Tasks: desktopicon

[Run]
Filename: "{app}\xmedgpt.exe"; Parameters: "doctor"; Description: "Check GPU, audio, codecs and models"; Flags: postinstall skipifsilent runhidden

[Code]
procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
begin
  if (CurUninstallStep = usPostUninstall) and
     (MsgBox('Also delete drafts, the audit log and settings? (Usually kept for compliance.)',
             mbConfirmation, MB_YESNO or MB_DEFBUTTON2) = IDYES) then
  begin
    DelTree(ExpandConstant('{localappdata}\XMedGPT'), True, True, True);
    DelTree(ExpandConstant('{userappdata}\XMedGPT'), True, True, True);
  end;
end;
